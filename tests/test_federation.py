"""Three back ends (SQL, REST, SOAP) federated behind one customerBill collection."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_config
from simulators.rest_billing import create_app as rest_simulator
from simulators.rest_billing import seed as rest_seed
from simulators.soap_billing import create_app as soap_simulator
from simulators.soap_billing import seed as soap_seed
from tests.conftest import API, ROOT, assert_valid, fetch_all, tuned
from tests.listener import Listener
from tests.servers import ThreadedServer


@pytest.fixture
def federated(
    scratch_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    rest, soap = rest_simulator(rest_seed()), soap_simulator(soap_seed())
    with ThreadedServer(rest) as rest_server, ThreadedServer(soap) as soap_server:
        monkeypatch.setenv("LEGACY_DB", str(scratch_db))
        monkeypatch.setenv("ENTERPRISE_URL", rest_server.base)
        monkeypatch.setenv("CONSUMER_WSDL", f"{soap_server.base}/billing.wsdl")
        monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        config = tuned(
            load_config(ROOT / "config" / "federated.yaml"),
            worker={"poll_seconds": 0.05},
            delivery={"poll_seconds": 0.05, "timeout_seconds": 1},
            detection_seconds=0.1,
        )
        with TestClient(create_app(config)) as client:
            client.store = tmp_path / "store.sqlite"  # type: ignore[attr-defined]
            client.rest = rest.state.data  # type: ignore[attr-defined]
            client.soap = soap.state.data  # type: ignore[attr-defined]
            yield client


def test_one_collection_over_three_back_ends(federated: TestClient) -> None:
    bills = fetch_all(federated, "customerBill")
    assert len(bills) == 300 + len(federated.rest.invoices) + len(federated.soap.invoices)
    assert len({b["id"] for b in bills}) == len(bills)
    assert {b["id"][:2] for b in bills} == {"L-", "E-", "S-"}
    for bill in bills:
        assert_valid("CustomerBill", bill)
        assert bill["href"].endswith(f"/customerBill/{bill['id']}")
    for ident in ("L-5", "E-EI-000001", "S-C-1001"):
        single = federated.get(f"{API}/customerBill/{ident}")
        assert single.status_code == 200 and single.json()["id"] == ident
        assert_valid("CustomerBill", single.json())
        assert single.json() == next(b for b in bills if b["id"] == ident)
    for ident in ("X-1", "L-999999", "5"):
        assert federated.get(f"{API}/customerBill/{ident}").status_code == 404


def test_global_sort_and_paging_across_back_ends(federated: TestClient) -> None:
    everything = fetch_all(federated, "customerBill", "sort=-amountDue.value")
    amounts = [b["amountDue"]["value"] for b in everything]
    assert amounts == sorted(amounts, reverse=True)
    pages: list[Any] = []
    for offset in range(0, 120, 17):
        response = federated.get(
            f"{API}/customerBill?sort=-amountDue.value&offset={offset}&limit=17"
        )
        assert response.headers["X-Total-Count"] == str(len(everything))
        pages.extend(b["id"] for b in response.json())
    assert pages == [b["id"] for b in everything][: len(pages)]


def test_filters_and_routing(federated: TestClient) -> None:
    everything = fetch_all(federated, "customerBill")
    new = fetch_all(federated, "customerBill", "state=new")
    assert [b["id"] for b in new] == [b["id"] for b in everything if b["state"] == "new"]
    assert {b["id"][:2] for b in new} == {"L-", "E-", "S-"}
    enterprise = fetch_all(federated, "customerBill", "billingAccount.id=ENT-0003")
    assert enterprise and {b["id"][:2] for b in enterprise} == {"E-"}
    expected = [b["id"] for b in everything if b["billingAccount"]["id"] == "ENT-0003"]
    assert [b["id"] for b in enterprise] == expected
    picked = fetch_all(federated, "customerBill", "id=L-5,S-C-1002,E-EI-000003")
    assert sorted(b["id"] for b in picked) == ["E-EI-000003", "L-5", "S-C-1002"]
    response = federated.get(f"{API}/customerBill?id.gt=L-5")
    assert response.status_code == 400


@pytest.mark.parametrize("ident", ["L-278", "E-EI-000001", "S-C-1006"])
def test_patch_reaches_the_back_end_that_owns_the_bill(federated: TestClient, ident: str) -> None:
    before = federated.get(f"{API}/customerBill/{ident}")
    assert before.json()["state"] == "new", before.json()
    response = federated.patch(
        f"{API}/customerBill/{ident}",
        json={"state": "onHold"},
        headers={
            "Content-Type": "application/merge-patch+json",
            "If-Match": before.headers["ETag"],
        },
    )
    assert response.status_code == 200, response.text
    assert_valid("CustomerBill", response.json())
    assert response.json()["id"] == ident and response.json()["state"] == "onHold"
    assert federated.get(f"{API}/customerBill/{ident}").json()["state"] == "onHold"
    stale = federated.patch(
        f"{API}/customerBill/{ident}",
        json={"state": "validated"},
        headers={
            "Content-Type": "application/merge-patch+json",
            "If-Match": before.headers["ETag"],
        },
    )
    assert stale.status_code == 412


def wait_done(client: TestClient, href: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while (request := client.get(href).json())["state"] == "inProgress":
        assert time.monotonic() < deadline, request
        time.sleep(0.02)
    assert_valid("CustomerBillOnDemand", request)
    return request


@pytest.mark.parametrize(
    ("account", "prefix"), [("BA-000003", "L-"), ("ENT-0001", "E-"), ("CUST00002", "S-")]
)
def test_bills_on_demand_go_to_the_back_end_holding_the_account(
    federated: TestClient, account: str, prefix: str
) -> None:
    if prefix == "S-":  # pick a consumer with something to bill
        account = next(c for c, a in sorted(federated.soap.unbilled.items()) if a > 0)
    if prefix == "E-":
        account = next(a for a, c in sorted(federated.rest.unbilled_cents.items()) if c > 0)
    created = federated.post(
        f"{API}/customerBillOnDemand", json={"billingAccount": {"id": account}}
    )
    assert created.status_code == 201, created.text
    done = wait_done(federated, created.headers["Location"])
    assert done["state"] == "done", done
    assert done["customerBill"]["id"].startswith(prefix)
    bill = federated.get(done["customerBill"]["href"])
    assert bill.status_code == 200
    assert_valid("CustomerBill", bill.json())
    assert bill.json()["billingAccount"]["id"] == account
    nobody = federated.post(f"{API}/customerBillOnDemand", json={"billingAccount": {"id": "X-1"}})
    assert nobody.status_code == 400 and "no back end holds" in nobody.json()["message"]


def test_events_carry_federated_ids_from_every_kind_of_back_end(federated: TestClient) -> None:
    with Listener() as listener:
        deadline = time.monotonic() + 10
        while True:  # the detectors' first pass records what exists (SQL and REST routes)
            with sqlite3.connect(federated.store) as conn:
                if conn.execute("SELECT count(*) FROM watermark").fetchone()[0] >= 2:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        hub = federated.post(f"{API}/hub", json={"callback": f"{listener.base}/ok"})
        assert hub.status_code == 201
        for ident in ("L-278", "E-EI-000001", "S-C-1006"):
            response = federated.patch(
                f"{API}/customerBill/{ident}",
                json={"state": "onHold"},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert response.status_code == 200, response.text
        # A change made in the REST back end by someone else is noticed by its detector.
        federated.rest.invoices["EI-000002"]["status"] = "PAID"
        federated.rest.invoices["EI-000002"]["updated_at"] = "2099-01-01T00:00:00Z"
        events = listener.wait_for("ok", 4, "CustomerBillStateChangeEvent")
        time.sleep(0.5)
        events = listener.events("ok", "CustomerBillStateChangeEvent")
    ids = sorted(e["event"]["customerBill"]["id"] for e in events)
    assert ids == ["E-EI-000001", "E-EI-000002", "L-278", "S-C-1006"]
    for event in events:
        assert_valid("CustomerBillStateChangeEvent", event)
        assert event["event"]["customerBill"]["href"].endswith(event["event"]["customerBill"]["id"])
