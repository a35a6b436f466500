"""POST /customerBillOnDemand end to end over the bundled database, restarts included."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from tests.conftest import API, ROOT, assert_valid, gateway_config, tuned
from tests.test_main import free_port, start, stop, wait_ready

ON_DEMAND = f"{API}/customerBillOnDemand"


@pytest.fixture
def gateway(scratch_db: Path, tmp_path: Path) -> Iterator[TestClient]:
    config = tuned(
        gateway_config(scratch_db, store=tmp_path / "store.sqlite"),
        worker={
            "poll_seconds": 0.05,
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 0.2,
            "retry_for_seconds": 1.5,
        },
    )
    with TestClient(create_app(config)) as client:
        client.db = scratch_db  # type: ignore[attr-defined]
        yield client


def legacy(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def account_with_unbilled(db: Path, skip: int = 0) -> str:
    rows = legacy(
        db,
        "SELECT c.ACCT_NO FROM CHG_LINE c JOIN ACCT_MASTER a ON a.ACCT_NO = c.ACCT_NO "
        "WHERE c.INV_ID IS NULL AND a.STAT_CD = 'A' GROUP BY c.ACCT_NO ORDER BY c.ACCT_NO",
    )
    return rows[skip][0]


def wait_until_finished(get: Any, url: str, seconds: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = get(url).json()
        assert_valid("CustomerBillOnDemand", body)
        if body["state"] != "inProgress":
            return body
        time.sleep(0.05)
    raise AssertionError(f"{url} still inProgress after {seconds} s")


def test_a_bill_is_produced_from_the_unbilled_charges(gateway: TestClient) -> None:
    db = gateway.db
    account = account_with_unbilled(db)
    unbilled = legacy(
        db,
        "SELECT CHG_ID, NET_AMT, TAX_AMT FROM CHG_LINE WHERE ACCT_NO = ? AND INV_ID IS NULL",
        account,
    )
    response = gateway.post(
        ON_DEMAND,
        json={
            "@type": "CustomerBillOnDemand",
            "name": "Final bill",
            "description": "Customer moves away",
            "billingAccount": {"id": account, "@type": "BillingAccountRef"},
        },
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert_valid("CustomerBillOnDemand", created)
    assert created["state"] == "inProgress"
    assert response.headers["Location"] == created["href"]
    assert created["href"] == f"http://testserver{ON_DEMAND}/{created['id']}"
    assert created["billingAccount"]["id"] == account and created["name"] == "Final bill"

    done = wait_until_finished(gateway.get, created["href"])
    assert_valid("CustomerBillOnDemand", done)
    assert done["state"] == "done", done
    bill = gateway.get(done["customerBill"]["href"])
    assert bill.status_code == 200
    assert_valid("CustomerBill", bill.json())
    bill = bill.json()
    assert bill["id"] == done["customerBill"]["id"]
    assert bill["billingAccount"]["id"] == account
    assert bill["state"] == "new" and bill["runType"] == "offCycle"
    gross = sum(net + tax for _, net, tax in unbilled)
    assert round(bill["amountDue"]["value"] * 100) == gross
    assert round(sum(t["taxAmount"]["value"] for t in bill["taxItem"]) * 100) == sum(
        tax for _, _, tax in unbilled
    )
    rates = gateway.get(f"{API}/appliedCustomerBillingRate?bill.id={bill['id']}&limit=1000")
    assert sorted(int(r["id"]) for r in rates.json()) == sorted(c for c, _, _ in unbilled)
    assert all(r["isBilled"] for r in rates.json())
    assert legacy(
        db, "SELECT count(*) FROM CHG_LINE WHERE ACCT_NO = ? AND INV_ID IS NULL", account
    ) == [(0,)]
    assert legacy(db, "SELECT INV_ID FROM INV_HDR WHERE EXT_REF = ?", created["id"]) == [
        (int(bill["id"]),)
    ]


def test_missing_type_is_defaulted_and_the_oas_example_is_accepted(gateway: TestClient) -> None:
    account = account_with_unbilled(gateway.db)
    minimal = gateway.post(ON_DEMAND, json={"billingAccount": {"id": account}})
    assert minimal.status_code == 201, minimal.text
    assert_valid("CustomerBillOnDemand", minimal.json())
    example = {
        "description": "Customer bill on demand",
        "lastUpdate": "2020-01-19T12:34:56.123Z",
        "name": "BillOnCustomerDemand",
        "billingAccount": {
            "id": account,
            "@type": "BillingAccountRef",
            "@referredType": "BillingAccount",
        },
        "relatedParty": {
            "role": "requester",
            "@type": "RelatedPartyRefOrPartyRoleRef",
            "partyOrPartyRole": {
                "id": "RP0815",
                "@referredType": "Individual",
                "@type": "PartyRef",
            },
        },
        "@type": "CustomerBillOnDemand",
    }
    response = gateway.post(ON_DEMAND, json=example)
    assert response.status_code == 201, response.text
    assert response.json()["relatedParty"] == example["relatedParty"]
    assert response.json()["lastUpdate"] != example["lastUpdate"]  # the gateway's own time


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{broken", "not JSON"),
        (b"[]", "JSON object"),
        ({"name": "x"}, "'billingAccount' is a required property"),
        ({"billingAccount": {"name": "no id"}}, "'id' is a required property"),
        ({"billingAccount": {"id": "BA-999999"}}, "unknown billing account"),
        ({"@type": "CustomerBill", "billingAccount": {"id": "BA-000001"}}, "@type must be"),
        ({"id": "mine", "billingAccount": {"id": "BA-000001"}}, "id: set by the gateway"),
        ({"customerBill": {"id": "1"}, "billingAccount": {"id": "BA-000001"}}, "customerBill"),
        ({"state": "done", "billingAccount": {"id": "BA-000001"}}, "state is inProgress"),
    ],
)
def test_bad_requests_are_400_and_stored_nowhere(
    gateway: TestClient, body: Any, words: str
) -> None:
    response = (
        gateway.post(ON_DEMAND, content=body, headers={"Content-Type": "application/json"})
        if isinstance(body, bytes)
        else gateway.post(ON_DEMAND, json=body)
    )
    assert response.status_code == 400, response.text
    assert_valid("Error", response.json())
    assert words in response.json()["message"]
    assert gateway.get(ON_DEMAND).headers["X-Total-Count"] == "0"


def test_an_account_without_unbilled_charges_is_rejected_with_the_reason(
    gateway: TestClient,
) -> None:
    (account,) = legacy(
        gateway.db,
        "SELECT ACCT_NO FROM ACCT_MASTER a WHERE STAT_CD = 'A' AND NOT EXISTS "
        "(SELECT 1 FROM CHG_LINE c WHERE c.ACCT_NO = a.ACCT_NO AND c.INV_ID IS NULL) LIMIT 1",
    )[0:1][0]
    created = gateway.post(ON_DEMAND, json={"billingAccount": {"id": account}}).json()
    finished = wait_until_finished(gateway.get, created["href"])
    assert finished["state"] == "rejected"
    assert "no unbilled charges" in finished["description"]
    assert "customerBill" not in finished
    assert_valid("CustomerBillOnDemand", finished)


def test_a_failing_back_end_ends_in_terminated_with_error_and_writes_nothing(
    gateway: TestClient,
) -> None:
    db = gateway.db
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER no_tax BEFORE INSERT ON INV_TAX "
            "BEGIN SELECT RAISE(ABORT, 'tax engine offline'); END"
        )
    account = account_with_unbilled(db)
    bills_before = legacy(db, "SELECT count(*) FROM INV_HDR")
    created = gateway.post(ON_DEMAND, json={"billingAccount": {"id": account}}).json()
    finished = wait_until_finished(gateway.get, created["href"])
    assert finished["state"] == "terminatedWithError"
    # Retried for retry_for_seconds (1.5 s at 0.05-0.2 s apart), then given up.
    tries = re.search(r"\((\d+) tries in (\d+) s\)", finished["description"])
    assert tries is not None, finished["description"]
    assert int(tries[1]) >= 5 and int(tries[2]) in (1, 2, 3)
    assert "tax engine" not in finished["description"]  # back-end internals stay in the log
    assert legacy(db, "SELECT count(*) FROM INV_HDR") == bills_before
    assert legacy(
        db,
        "SELECT count(*) FROM CHG_LINE WHERE ACCT_NO = ? AND INV_ID IS NOT NULL "
        "AND INV_ID NOT IN (SELECT INV_ID FROM INV_HDR)",
        account,
    ) == [(0,)]


def test_requests_are_listed_with_the_query_features(gateway: TestClient) -> None:
    accounts = [account_with_unbilled(gateway.db, i) for i in range(3)]
    ids = [
        gateway.post(ON_DEMAND, json={"billingAccount": {"id": a}, "name": f"r{i}"}).json()["id"]
        for i, a in enumerate(accounts)
    ]
    for ident in ids:
        wait_until_finished(gateway.get, f"{ON_DEMAND}/{ident}")
    listed = gateway.get(f"{ON_DEMAND}?sort=-name&fields=name,state")
    assert listed.headers["X-Total-Count"] == "3"
    assert [r["name"] for r in listed.json()] == ["r2", "r1", "r0"]
    for item in listed.json():
        assert_valid("CustomerBillOnDemand", item)
        assert set(item) == {"id", "href", "@type", "name", "state"}
    one = gateway.get(f"{ON_DEMAND}?billingAccount.id={accounts[1]}&state=done")
    assert [r["id"] for r in one.json()] == [ids[1]]
    page = gateway.get(f"{ON_DEMAND}?offset=1&limit=1")
    assert [r["id"] for r in page.json()] == [ids[1]]
    assert gateway.get(f"{ON_DEMAND}/{ids[0]}?fields=state").json()["state"] == "done"


def write_config(tmp_path: Path, pause: float) -> Path:
    config = tmp_path / f"gateway-{pause}.yaml"
    mappings = ROOT / "mappings"
    config.write_text(
        f"""
backends:
  legacy_billing: {{kind: sql, url: "sqlite+aiosqlite:///${{LEGACY_DB}}"}}
resources:
  customerBill: {{backend: legacy_billing, mapping: {mappings}/legacy_sql/customer_bill.yaml}}
store: {{url: "sqlite+aiosqlite:///${{GATEWAY_STORE}}"}}
on_demand:
  backend: legacy_billing
  action: {mappings}/legacy_sql/actions/produce_bill.yaml
  mapping: {mappings}/gateway_store/customer_bill_on_demand.yaml
  worker: {{poll_seconds: 0.1, lease_seconds: 1, pause_after_action_seconds: {pause}}}
"""
    )
    return config


def test_a_kill_9_after_the_back_end_committed_still_gives_exactly_one_bill(
    scratch_db: Path, tmp_path: Path
) -> None:
    env = {"LEGACY_DB": str(scratch_db), "GATEWAY_STORE": str(tmp_path / "store.sqlite")}
    account = account_with_unbilled(scratch_db)
    port = free_port()
    first = start({**env, "PORT": str(port)}, "--config", str(write_config(tmp_path, 60)))
    base = f"http://127.0.0.1:{port}{API}"
    try:
        wait_ready(f"{base}/customerBill?limit=1", first)
        created = httpx.post(
            f"{base}/customerBillOnDemand", json={"billingAccount": {"id": account}}, timeout=10
        )
        assert created.status_code == 201
        ident = created.json()["id"]
        deadline = time.monotonic() + 20
        while not legacy(scratch_db, "SELECT INV_ID FROM INV_HDR WHERE EXT_REF = ?", ident):
            assert time.monotonic() < deadline, "the back end never produced the bill"
            time.sleep(0.05)
        # The bill is committed in the back end; the gateway has not recorded it yet.
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        stop(first)
    # Killed before it recorded the outcome: the store still has the request in progress
    # (read from the file: a restarted gateway may finish it before its first answer).
    store = tmp_path / "store.sqlite"
    assert legacy(store, "SELECT state FROM bill_on_demand WHERE id = ?", ident) == [
        ("inProgress",)
    ]

    port = free_port()
    second = start({**env, "PORT": str(port)}, "--config", str(write_config(tmp_path, 0)))
    base = f"http://127.0.0.1:{port}{API}"
    try:
        wait_ready(f"{base}/customerBill?limit=1", second)
        done = wait_until_finished(
            lambda url: httpx.get(url, timeout=10), f"{base}/customerBillOnDemand/{ident}"
        )
    finally:
        stop(second)
    assert done["state"] == "done"
    bills = legacy(scratch_db, "SELECT INV_ID FROM INV_HDR WHERE EXT_REF = ?", ident)
    assert bills == [(int(done["customerBill"]["id"]),)]
    assert legacy(
        scratch_db,
        "SELECT count(*) FROM INV_HDR WHERE ACCT_NO = ? AND RUN_ID IS NULL "
        "AND CAT_CD = 'INT' AND EXT_REF IS NOT NULL",
        account,
    ) == [(1,)]
