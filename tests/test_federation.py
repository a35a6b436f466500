"""Three back ends (SQL, REST, SOAP) federated behind each of the three collections.

The same conformance checks run on customerBill, appliedCustomerBillingRate and billCycle
(`make demo`'s config/federated.yaml): list, get by id, filters, sort, fields, paging with
`X-Total-Count`, every response valid against the OAS, and filters pushed down to each
back end in its own terms (the REST and SOAP simulators record the calls they get).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sql_event
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_config
from simulators.rest_billing import create_app as rest_simulator
from simulators.rest_billing import seed as rest_seed
from simulators.soap_billing import create_app as soap_simulator
from simulators.soap_billing import seed as soap_seed
from tests.conftest import API, ROOT, assert_valid, fetch_all, tuned
from tests.listener import Listener
from tests.misbehaving import Call, Misbehaving
from tests.servers import ThreadedServer


@pytest.fixture
def federated(
    scratch_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    rest, soap = rest_simulator(rest_seed()), soap_simulator(soap_seed())
    rest_calls, soap_calls = Misbehaving(rest), Misbehaving(soap)  # they record every call
    with ThreadedServer(rest_calls) as rest_server, ThreadedServer(soap_calls) as soap_server:
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
            statements: list[str] = []  # what the legacy database is asked

            def remember(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                statements.append(statement)

            legacy = client.app.state.services.customer_bills.routes[0]  # type: ignore[attr-defined]
            engine = legacy.reader.source.adapter.engine.sync_engine
            sql_event.listen(engine, "before_cursor_execute", remember)
            client.sql = statements  # type: ignore[attr-defined]
            client.store = tmp_path / "store.sqlite"  # type: ignore[attr-defined]
            client.rest = rest.state.data  # type: ignore[attr-defined]
            client.soap = soap.state.data  # type: ignore[attr-defined]
            client.rest_calls = rest_calls  # type: ignore[attr-defined]
            client.soap_calls = soap_calls  # type: ignore[attr-defined]
            client.db = scratch_db  # type: ignore[attr-defined]
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


# The same conformance checks for every collection the federated demo serves.


@dataclass(frozen=True)
class Served:
    """A collection: its schema, and where each back end keeps its records."""

    schema: str
    table: str  # the legacy SQL table
    rest: str  # the REST simulator's records (an attribute of its data)
    soap: str  # the SOAP simulator's
    sort: str  # a sort key of the collection
    fields: str  # an attribute to project


SERVED = {
    "customerBill": Served(
        "CustomerBill", "INV_HDR", "invoices", "invoices", "-amountDue.value", "billNo"
    ),
    "appliedCustomerBillingRate": Served(
        "AppliedCustomerBillingRate", "CHG_LINE", "charges", "charges", "-date", "name"
    ),
    "billCycle": Served("BillCycle", "BILL_RUN", "runs", "cycles", "billingDate", "name"),
}
COLLECTIONS = list(SERVED)


def counted(client: TestClient, served: Served) -> dict[str, int]:
    """How many records each back end holds, from the back ends themselves."""
    with sqlite3.connect(client.db) as conn:  # type: ignore[attr-defined]
        legacy = conn.execute(f"SELECT count(*) FROM {served.table}").fetchone()[0]
    return {
        "L-": legacy,
        "E-": len(getattr(client.rest, served.rest)),  # type: ignore[attr-defined]
        "S-": len(getattr(client.soap, served.soap)),  # type: ignore[attr-defined]
    }


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert_valid("Error", body)
    return body


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_list_and_get_by_id_over_three_back_ends(federated: TestClient, collection: str) -> None:
    served = SERVED[collection]
    items = fetch_all(federated, collection)
    expected = counted(federated, served)
    assert {p: sum(i["id"].startswith(p) for i in items) for p in expected} == expected
    assert len({i["id"] for i in items}) == len(items)
    for item in items:
        assert_valid(served.schema, item)
        assert item["href"].endswith(f"/{collection}/{item['id']}")
    for prefix in expected:
        listed = next(i for i in reversed(items) if i["id"].startswith(prefix))
        single = federated.get(f"{API}/{collection}/{listed['id']}")
        assert single.status_code == 200, single.text
        assert_valid(served.schema, single.json())
        assert single.json() == listed
        error(federated.get(f"{API}/{collection}/{prefix}NO-SUCH-ID"), 404)
    error(federated.get(f"{API}/{collection}/X-1"), 404)


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_sort_paging_and_total_count(federated: TestClient, collection: str) -> None:
    served = SERVED[collection]
    everything = fetch_all(federated, collection, f"sort={served.sort}")
    path, descending = served.sort.lstrip("-").split("."), served.sort.startswith("-")

    def value(item: dict[str, Any]) -> Any:
        for part in path:
            item = item[part]
        # Date-times from several back ends carry several offsets: compare instants.
        return datetime.fromisoformat(item) if isinstance(item, str) else item

    values = [value(i) for i in everything]
    assert values == sorted(values, reverse=descending)
    assert len(everything) == sum(counted(federated, served).values())
    pages: list[str] = []
    size = max(len(everything) // 5, 7)
    for offset in range(0, len(everything) + size, size):
        response = federated.get(
            f"{API}/{collection}?sort={served.sort}&offset={offset}&limit={size}"
        )
        assert response.status_code == 200, response.text
        assert response.headers["X-Total-Count"] == str(len(everything))
        assert int(response.headers["X-Result-Count"]) == len(response.json())
        for item in response.json():
            assert_valid(served.schema, item)
        pages.extend(i["id"] for i in response.json())
    assert pages == [i["id"] for i in everything]


@pytest.mark.parametrize("collection", COLLECTIONS)
def test_fields_project_every_back_ends_items(federated: TestClient, collection: str) -> None:
    served = SERVED[collection]
    projected = fetch_all(federated, collection, f"fields={served.fields}")
    assert {i["id"][:2] for i in projected} == {"L-", "E-", "S-"}
    for item in projected:
        assert set(item) == {"id", "href", "@type", served.fields}, item
        assert item["@type"] == served.schema
    one = federated.get(f"{API}/{collection}/{projected[-1]['id']}?fields={served.fields}")
    assert one.json() == projected[-1]
    error(federated.get(f"{API}/{collection}?fields=noSuchAttribute"), 400)


def rest_queries(client: TestClient, path: str) -> list[str]:
    calls: list[Call] = client.rest_calls.calls  # type: ignore[attr-defined]
    # (The change detector polls the invoices by last update meanwhile: not ours.)
    return [c.query for c in calls if c.path == path and "sort=updated_at" not in c.query]


def soap_bodies(client: TestClient, operation: str) -> list[bytes]:
    calls: list[Call] = client.soap_calls.calls  # type: ignore[attr-defined]
    return [c.body for c in calls if f":{operation}>".encode() in c.body]


# (collection, query, what the SQL, REST and SOAP back ends must have been asked: a
# column in the WHERE clause, a query parameter, a request element; None: that back end
# must not have been asked at all; "": asked without that filter, which the gateway applies).
FILTERS = [
    ("appliedCustomerBillingRate", "isBilled=false", "BILLED_FLG", "billed=False", b">N</"),
    (
        "appliedCustomerBillingRate",
        "billingAccount.id=ENT-0003",
        None,
        "account_id=ENT-0003",
        None,
    ),
    (
        "appliedCustomerBillingRate",
        "billingAccount.id=CUST00004",
        None,
        None,
        b">CUST00004</",
    ),
    (
        "appliedCustomerBillingRate",
        "billingAccount.id=BA-000003",
        "ACCT_NO",
        None,
        None,
    ),
    # A bill reference names the federated bill: only the back end holding it is asked.
    ("appliedCustomerBillingRate", "bill.id=S-C-1007", None, None, b">C-1007</"),
    ("appliedCustomerBillingRate", "bill.id=E-EI-000001", None, "invoice_id=EI-000001", None),
    ("appliedCustomerBillingRate", "bill.id=L-12", "INV_ID", None, None),
    (
        "appliedCustomerBillingRate",
        "appliedBillingRateType=appliedBillingCharge",
        "CHG_TYP",
        "type=RECURRING,USAGE,ONE_TIME",
        b">REC</",
    ),
    ("billCycle", "name=ENT-2024-03", "RUN_CD", "code=ENT-2024-03", b">ENT-2024-03</"),
    ("billCycle", "name=M05-2024", "RUN_CD", "code=M05-2024", b">M05-2024</"),
    ("billCycle", "billingPeriod=March", "PRD_LBL", "", b""),
    ("customerBill", "state=new", "STAT_CD", "status=OPEN", b">DRAFT</"),
    ("customerBill", "billingAccount.id=CUST00002", None, None, b">CUST00002</"),
]
TABLES = {"appliedCustomerBillingRate": "CHG_LINE", "billCycle": "BILL_RUN"}


def sql_where(client: TestClient, collection: str) -> list[str]:
    """The WHERE clauses of the statements on the collection's table (none for bills: the
    change detector reads those meanwhile)."""
    statements: list[str] = client.sql  # type: ignore[attr-defined]
    table = TABLES.get(collection)
    return [
        s.partition("WHERE")[2]
        for s in list(statements)
        if table is not None and table in s.partition("WHERE")[0]
    ]


@pytest.mark.parametrize(("collection", "query", "sql_asked", "rest_asked", "soap_asked"), FILTERS)
def test_filters_agree_with_the_whole_list_and_go_down_to_each_back_end(
    federated: TestClient,
    collection: str,
    query: str,
    sql_asked: str | None,
    rest_asked: str | None,
    soap_asked: bytes | None,
) -> None:
    served = SERVED[collection]
    everything = fetch_all(federated, collection)
    name, _, wanted = query.partition("=")
    path = name.split(".")

    def value(item: dict[str, Any]) -> Any:
        for part in path:
            item = item.get(part) if isinstance(item, dict) else None  # type: ignore[assignment]
        return item

    truth = [i["id"] for i in everything if str(value(i)).lower() == wanted.lower()]
    federated.rest_calls.calls.clear()  # type: ignore[attr-defined]
    federated.soap_calls.calls.clear()  # type: ignore[attr-defined]
    federated.sql.clear()  # type: ignore[attr-defined]
    found = fetch_all(federated, collection, query)
    for item in found:
        assert_valid(served.schema, item)
    assert [i["id"] for i in found] == truth
    if collection in TABLES:
        wheres = sql_where(federated, collection)
        if sql_asked is None:
            assert not wheres, wheres
        else:
            assert wheres and all(sql_asked in w for w in wheres), wheres
    rest_path = {
        "customerBill": "/api/v1/invoices",
        "appliedCustomerBillingRate": "/api/v1/charges",
        "billCycle": "/api/v1/bill-runs",
    }[collection]
    operation = {
        "customerBill": "ListInvoices",
        "appliedCustomerBillingRate": "ListCharges",
        "billCycle": "ListBillCycles",
    }[collection]
    queries = rest_queries(federated, rest_path)
    if rest_asked is None:
        assert not queries
    else:
        assert queries and all(rest_asked in q for q in queries), queries
    bodies = soap_bodies(federated, operation)
    if soap_asked is None:
        assert not bodies
    else:
        assert bodies and all(soap_asked in b for b in bodies)


@pytest.mark.parametrize("collection", ["appliedCustomerBillingRate", "billCycle"])
def test_bad_queries_are_400_on_every_collection(federated: TestClient, collection: str) -> None:
    error(federated.get(f"{API}/{collection}?sort=noSuchAttribute"), 400)
    error(federated.get(f"{API}/{collection}?limit=-1"), 400)
    error(federated.get(f"{API}/{collection}?id.gt=L-5"), 400)


# References to another federated collection carry the referred route's prefix.
# (The REST and SOAP bills name no bill cycle: only the SQL back end's bills refer.)
REFERRING = [
    ("appliedCustomerBillingRate", "bill", ("L-", "E-", "S-")),
    ("customerBill", "billCycle", ("L-",)),
]


@pytest.mark.parametrize(("collection", "attribute", "referring"), REFERRING)
def test_references_name_the_federated_resource_and_resolve(
    federated: TestClient, collection: str, attribute: str, referring: tuple[str, ...]
) -> None:
    items = fetch_all(federated, collection)
    refs = [(i["id"][:2], i[attribute]) for i in items if attribute in i]
    assert {prefix for prefix, _ in refs} == set(referring)
    for prefix, ref in refs:
        assert ref["id"].startswith(prefix), (prefix, ref)  # same back end, same prefix
    for prefix in referring:  # one per back end: its href leads to it
        ref = next(r for p, r in refs if p == prefix)
        assert ref["href"].endswith(f"/{ref['id']}")
        target = federated.get(ref["href"])
        assert target.status_code == 200, (ref, target.text)
        assert target.json()["id"] == ref["id"]


@pytest.mark.parametrize(("collection", "attribute", "referring"), REFERRING)
def test_filters_on_reference_ids_take_the_federated_id(
    federated: TestClient, collection: str, attribute: str, referring: tuple[str, ...]
) -> None:
    items = fetch_all(federated, collection)
    for prefix in referring:
        wanted = next(
            i[attribute]["id"] for i in items if i["id"].startswith(prefix) and attribute in i
        )
        expected = sorted(i["id"] for i in items if i.get(attribute, {}).get("id") == wanted)
        found = fetch_all(federated, collection, f"{attribute}.id={wanted}")
        assert sorted(i["id"] for i in found) == expected and expected
        others = fetch_all(federated, collection, f"{attribute}.id.ne={wanted}")
        assert sorted(i["id"] for i in others) == sorted(
            i["id"] for i in items if i.get(attribute, {}).get("id") != wanted
        )
    error(federated.get(f"{API}/{collection}?{attribute}.id.gt=L-1"), 400)


def test_patch_of_a_federated_bills_cycle_takes_the_federated_cycle_id(
    federated: TestClient,
) -> None:
    bill = federated.get(f"{API}/customerBill/L-278").json()
    cycles = [c["id"] for c in fetch_all(federated, "billCycle") if c["id"].startswith("L-")]
    other = next(c for c in cycles if c != bill.get("billCycle", {}).get("id"))
    patch = {"Content-Type": "application/merge-patch+json"}
    moved = federated.patch(
        f"{API}/customerBill/L-278", json={"billCycle": {"id": other}}, headers=patch
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["billCycle"]["id"] == other
    assert federated.get(f"{API}/customerBill/L-278").json()["billCycle"]["id"] == other
    local = int(other[2:])
    with sqlite3.connect(federated.db) as conn:  # type: ignore[attr-defined]
        assert conn.execute("SELECT RUN_ID FROM INV_HDR WHERE INV_ID = 278").fetchone()[0] == local
    elsewhere = federated.patch(
        f"{API}/customerBill/L-278", json={"billCycle": {"id": "E-BR-1"}}, headers=patch
    )
    assert error(elsewhere, 400)["reason"] == "Unknown reference"
