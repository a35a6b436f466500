"""POST /customerBillOnDemand end to end over the bundled database, restarts included."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text
from starlette.testclient import TestClient

from gateway.app import create_app, open_services
from gateway.config import WorkerSettings, load_config
from gateway.services import StartupError
from gateway.store import GatewayStore
from simulators.rest_billing import BillingData
from simulators.rest_billing import create_app as rest_simulator
from simulators.rest_billing import seed as rest_seed
from simulators.soap_billing import NS as SOAP_NS
from simulators.soap_billing import SOAP_ENV, ConsumerData
from simulators.soap_billing import create_app as soap_simulator
from simulators.soap_billing import seed as soap_seed
from tests.conftest import API, ROOT, assert_valid, gateway_config, tuned
from tests.misbehaving import (
    Call,
    Forward,
    Misbehaving,
    Reply,
    done_but_answers,
    hung,
    late,
    unavailable,
)
from tests.servers import ThreadedServer
from tests.test_main import free_port, start, stop, wait_ready
from tests.test_store import postgres_database, postgres_url  # noqa: F401 (fixtures)
from tests.test_store import run as store_run

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


# Fault injection: real REST and SOAP simulators on loopback, behind `Misbehaving`.

FAST = {"poll_seconds": 0.05, "retry_base_seconds": 0.05, "retry_max_seconds": 0.2}
JSON = b"application/json"


def bill_now_of(*accounts: str) -> Callable[[Call], bool]:
    """REST bill-now calls (for these accounts only, when given)."""

    def matches(call: Call) -> bool:
        if call.method != "POST" or not call.path.endswith("/bill-now"):
            return False
        return not accounts or call.path.split("/")[-2] in accounts

    return matches


def soap_bill_now(call: Call) -> bool:
    return b"BillNow>" in call.body


def rest_accounts(data: BillingData, count: int) -> list[str]:
    """Accounts of the REST simulator that have something to bill."""
    found = [a for a, cents in sorted(data.unbilled_cents.items()) if cents > 0]
    assert len(found) >= count
    return found[:count]


@contextmanager
def rest_gateway(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    timeout: float = 5.0,
    action: Path | None = None,
    **worker: Any,
) -> Iterator[tuple[TestClient, Misbehaving, BillingData]]:
    """The REST example config (config/rest.yaml) over a misbehaving REST simulator."""
    data = rest_seed()
    back_end = Misbehaving(rest_simulator(data))
    with ThreadedServer(back_end) as server:
        monkeypatch.setenv("ENTERPRISE_URL", server.base)
        monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        config = load_config(ROOT / "config" / "rest.yaml")
        backend = config.backends["enterprise"].model_copy(update={"timeout_seconds": timeout})
        assert config.on_demand is not None
        actions = {"action": action or config.on_demand.action}
        on_demand = config.on_demand.model_copy(update=actions)
        config = config.model_copy(
            update={"backends": {"enterprise": backend}, "on_demand": on_demand}
        )
        with TestClient(create_app(tuned(config, worker={**FAST, **worker}))) as client:
            yield client, back_end, data


@contextmanager
def soap_gateway(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    timeout: float = 5.0,
    action: Path | None = None,
) -> Iterator[tuple[TestClient, Misbehaving, ConsumerData]]:
    """The SOAP example config (config/soap.yaml) over a misbehaving SOAP simulator."""
    data = soap_seed()
    back_end = Misbehaving(soap_simulator(data))
    with ThreadedServer(back_end) as server:
        monkeypatch.setenv("CONSUMER_WSDL", f"{server.base}/billing.wsdl")
        monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        config = load_config(ROOT / "config" / "soap.yaml")
        backend = config.backends["consumer"].model_copy(update={"timeout_seconds": timeout})
        assert config.on_demand is not None
        actions = {"action": action or config.on_demand.action}
        on_demand = config.on_demand.model_copy(update=actions)
        config = config.model_copy(
            update={"backends": {"consumer": backend}, "on_demand": on_demand}
        )
        with TestClient(create_app(tuned(config, worker=FAST))) as client:
            yield client, back_end, data


def request_bill(client: TestClient, account: str) -> str:
    """POST a request for the account; its href."""
    created = client.post(ON_DEMAND, json={"billingAccount": {"id": account}})
    assert created.status_code == 201, created.text
    href: str = created.headers["Location"]
    return href


def ident_of(href: str) -> str:
    return href.rsplit("/", 1)[1]


def test_a_rest_bill_id_of_the_wrong_type_ends_the_request_and_the_worker_lives_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with rest_gateway(tmp_path, monkeypatch) as (client, back_end, data):
        broken, healthy = rest_accounts(data, 2)
        back_end.on(bill_now_of(broken), done_but_answers(201, b'{"invoice_id": 12345}', JSON))
        failed = wait_until_finished(client.get, request_bill(client, broken), 10)
        assert failed["state"] == "terminatedWithError", failed
        assert "malformed reply" in failed["description"]
        assert "customerBill" not in failed
        # The worker survived: the next request is served.
        done = wait_until_finished(client.get, request_bill(client, healthy), 10)
        assert done["state"] == "done", done
        assert done["customerBill"]["id"] == data.references[done["id"]]


def test_a_soap_ok_without_invoice_ref_ends_the_request_and_the_worker_lives_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok_without_ref = (
        f'<?xml version="1.0"?><s:Envelope xmlns:s="{SOAP_ENV}"><s:Body>'
        f'<cb:BillNowResponse xmlns:cb="{SOAP_NS}"><cb:result>OK</cb:result>'
        "</cb:BillNowResponse></s:Body></s:Envelope>"
    ).encode()
    with soap_gateway(tmp_path, monkeypatch) as (client, back_end, data):
        broken, healthy = [c for c, amount in sorted(data.unbilled.items()) if amount > 0][:2]
        back_end.on(
            lambda call: soap_bill_now(call) and broken.encode() in call.body,
            done_but_answers(200, ok_without_ref, b"text/xml; charset=utf-8"),
        )
        failed = wait_until_finished(client.get, request_bill(client, broken), 10)
        assert failed["state"] == "terminatedWithError", failed
        assert "malformed reply" in failed["description"]
        done = wait_until_finished(client.get, request_bill(client, healthy), 10)
        assert done["state"] == "done", done
        assert done["customerBill"]["id"] == data.references[done["id"]]


def test_a_bill_made_by_a_late_rest_answer_is_found_by_the_action_find(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bill-now answers after the deadline; `find:` looks the bill up by reference."""
    with rest_gateway(tmp_path, monkeypatch, timeout=0.5) as (client, back_end, data):
        back_end.on(bill_now_of(), late(1.5))
        (account,) = rest_accounts(data, 1)
        invoices_before = len(data.invoices)
        href = request_bill(client, account)
        done = wait_until_finished(client.get, href, 10)
        assert done["state"] == "done", done
        assert done["customerBill"]["id"] == data.references[ident_of(href)]
        assert len(data.invoices) == invoices_before + 1
        assert any("/bill-now-references/" in call.path for call in back_end.calls)
        # The back end and the gateway agree: the account has nothing left to bill.
        back_end.heal()
        again = wait_until_finished(client.get, request_bill(client, account), 10)
        assert again["state"] == "rejected" and "nothing to bill" in again["description"]


def test_a_bill_made_by_a_late_soap_answer_is_the_outcome_of_the_next_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without `find:`, running the idempotent action again is the lookup by reference."""
    bundled = ROOT / "mappings" / "consumer_soap" / "actions" / "bill_now.yaml"
    action = tmp_path / "bill_now_without_find.yaml"
    action.write_text(bundled.read_text().split("\nfind:")[0])
    with soap_gateway(tmp_path, monkeypatch, timeout=0.5, action=action) as (
        client,
        back_end,
        data,
    ):
        customer = next(c for c, amount in sorted(data.unbilled.items()) if amount > 0)
        slow_once = late(1.5)
        answered: list[Call] = []

        async def first_late(call: Call, forward: Forward) -> Reply:
            answered.append(call)
            return await (slow_once(call, forward) if len(answered) == 1 else forward())

        back_end.on(soap_bill_now, first_late)
        invoices_before = len(data.invoices)
        href = request_bill(client, customer)
        done = wait_until_finished(client.get, href, 10)
        assert done["state"] == "done", done
        assert len(answered) >= 2  # the first answer came too late
        assert done["customerBill"]["id"] == data.references[ident_of(href)]
        assert len(data.invoices) == invoices_before + 1
        bill = client.get(done["customerBill"]["href"])
        assert bill.status_code == 200 and bill.json()["billingAccount"]["id"] == customer


def test_hung_requests_do_not_delay_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with rest_gateway(tmp_path, monkeypatch, timeout=5) as (client, back_end, data):
        *stuck, healthy = rest_accounts(data, 4)
        back_end.on(bill_now_of(*stuck), hung())
        hung_requests = [request_bill(client, account) for account in stuck]
        time.sleep(0.3)  # the worker has taken them up
        started = time.monotonic()
        done = wait_until_finished(client.get, request_bill(client, healthy), 10)
        assert done["state"] == "done", done
        assert time.monotonic() - started < 2  # sequentially: 3 x 5 s timeouts first
        for href in hung_requests:
            assert client.get(href).json()["state"] == "inProgress"


def write_two_back_ends(tmp_path: Path, db: Path, rest_base: str, **worker: Any) -> Path:
    config = tmp_path / "two-back-ends.yaml"
    mappings = ROOT / "mappings"
    settings = ", ".join(f"{key}: {value}" for key, value in {**FAST, **worker}.items())
    config.write_text(
        f"""
backends:
  legacy_billing: {{kind: sql, url: "sqlite+aiosqlite:///{db}"}}
  enterprise:
    kind: rest
    base_url: {rest_base}
    timeout_seconds: 10
    auth: {{type: oauth2_client_credentials, token_url: /oauth/token,
            client_id: gateway, client_secret: s3cret}}
resources:
  customerBill:
    - {{backend: legacy_billing, mapping: {mappings}/legacy_sql/customer_bill.yaml,
       id_prefix: "L-", accounts: "^BA-"}}
    - {{backend: enterprise, mapping: {mappings}/enterprise_rest/customer_bill.yaml,
       id_prefix: "E-", accounts: "^ENT-"}}
store: {{url: "sqlite+aiosqlite:///{tmp_path / "store.sqlite"}"}}
on_demand:
  actions:
    legacy_billing: {mappings}/legacy_sql/actions/produce_bill.yaml
    enterprise: {mappings}/enterprise_rest/actions/bill_now.yaml
  mapping: {mappings}/gateway_store/customer_bill_on_demand.yaml
  worker: {{{settings}}}
"""
    )
    return config


def test_a_hung_back_end_holds_only_its_own_slots(scratch_db: Path, tmp_path: Path) -> None:
    data = rest_seed()
    back_end = Misbehaving(rest_simulator(data))
    back_end.on(bill_now_of(), hung())
    with ThreadedServer(back_end) as server:
        path = write_two_back_ends(
            tmp_path, scratch_db, server.base, concurrency=3, per_backend_concurrency=2
        )
        with TestClient(create_app(load_config(path))) as client:
            stuck = [request_bill(client, account) for account in rest_accounts(data, 3)]
            time.sleep(0.5)  # the worker has taken up what its slots allow
            started = time.monotonic()
            done = wait_until_finished(client.get, request_bill(client, "BA-000003"), 10)
            assert done["state"] == "done", done
            assert done["customerBill"]["id"].startswith("L-")
            assert time.monotonic() - started < 2  # not after the REST timeouts (10 s)
            # Two slots for the hung back end: its third request was never sent.
            assert len([c for c in back_end.calls if bill_now_of()(c)]) == 2
            assert all(client.get(href).json()["state"] == "inProgress" for href in stuck)


def test_an_outage_longer_than_a_few_retries_delays_the_bill_but_does_not_lose_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with rest_gateway(tmp_path, monkeypatch) as (client, back_end, data):
        back_end.on(bill_now_of(), unavailable())
        (account,) = rest_accounts(data, 1)
        href = request_bill(client, account)
        time.sleep(2.5)  # 0.05-0.2 s apart: many more tries than a small count allows
        assert client.get(href).json()["state"] == "inProgress"
        back_end.heal()
        done = wait_until_finished(client.get, href, 10)
    assert done["state"] == "done", done
    assert done["customerBill"]["id"] == data.references[ident_of(href)]
    refused = [c for c in back_end.calls if bill_now_of()(c)]
    assert len(refused) > 10
    (attempts,) = legacy(
        tmp_path / "store.sqlite", "SELECT attempts FROM bill_on_demand WHERE id = ?", done["id"]
    )[0]
    assert attempts > 10


def test_worker_slots_are_checked() -> None:
    with pytest.raises(ValidationError, match="per_backend_concurrency exceeds concurrency"):
        WorkerSettings(concurrency=2, per_backend_concurrency=3)
    assert WorkerSettings().retry_for_seconds == 3600


# The store's side: claims per back end, and leases kept while a request runs.


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def request_for(store: GatewayStore, backend: str | None, account: str = "A-1") -> str:
    async with store.transaction() as conn:
        ident = await store.create_on_demand(
            conn,
            backend=backend or "none",
            account_id=account,
            account_name=None,
            name=None,
            description=None,
            related_party=None,
        )
        if backend is None:  # made before back ends were recorded
            await conn.execute(
                text("UPDATE bill_on_demand SET backend = NULL WHERE id = :i"), {"i": ident}
            )
    return ident


def test_requests_are_claimed_per_back_end_in_bounded_batches(any_store: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        sql = [await request_for(store, "sql") for _ in range(3)]
        rest = await request_for(store, "rest")
        stray, old = await request_for(store, "retired"), await request_for(store, None)
        first = await store.claim_on_demand_requests("W", 60, 2, backend="sql")
        assert [r.id for r in first] == sql[:2]
        assert all(r.attempts == 1 and r.backend == "sql" for r in first)
        created = first[0].created_at
        assert created is not None and abs(created - time.time()) < 5
        running = [r.id for r in first]
        assert await store.claim_on_demand_requests("W", 60, 0, backend="sql") == []
        rest_claim = await store.claim_on_demand_requests("W", 60, 5, backend="rest")
        assert [r.id for r in rest_claim] == [rest]
        strays = await store.claim_on_demand_requests(
            "W", 60, 5, backend="sql", strays_besides=["sql", "rest"], skip=running
        )
        assert [r.id for r in strays] == [sql[2], stray, old]
        # A request whose lease ran out is claimable again, unless its claimer says it runs it.
        await store.retry_on_demand_later(sql[0], "W", -1)
        assert await store.claim_on_demand_requests("W", 60, 5, backend="sql", skip=running) == []
        again = await store.claim_on_demand_requests("V", 60, 5, backend="sql")
        assert [(r.id, r.attempts) for r in again] == [(sql[0], 2)]

    store_run(any_store, scenario)


def test_a_running_request_keeps_its_lease(any_store: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        ident = await request_for(store, "sql")
        assert await store.claim_on_demand_requests("A", 0.3, 1, backend="sql")
        for _ in range(3):
            await asyncio.sleep(0.2)
            assert await store.renew_on_demand_lease(ident, "A", 0.3)
        assert await store.claim_on_demand_requests("B", 60, 1, backend="sql") == []
        assert not await store.renew_on_demand_lease(ident, "B", 60)  # not B's lease
        await asyncio.sleep(0.4)
        assert await store.claim_on_demand_requests("B", 60, 1, backend="sql")
        assert not await store.renew_on_demand_lease(ident, "A", 0.3)  # A lost it

    store_run(any_store, scenario)


def test_a_mistake_in_an_action_find_stops_start_up_with_file_and_line(
    scratch_db: Path, tmp_path: Path
) -> None:
    action = tmp_path / "produce_bill.yaml"
    original = (ROOT / "mappings" / "legacy_sql" / "actions" / "produce_bill.yaml").read_text()
    action.write_text(
        original + "find:\n  result: bill_id\n  steps:\n    - {sql: SELECT 1, bogus: true}\n"
    )
    line = len(original.splitlines()) + 3
    config = gateway_config(scratch_db, store=tmp_path / "store.sqlite")
    assert config.on_demand is not None
    config = config.model_copy(
        update={"on_demand": config.on_demand.model_copy(update={"action": action})}
    )

    async def start_up() -> None:
        async with AsyncExitStack() as stack:
            await open_services(config, stack, "http://gw")

    with pytest.raises(StartupError, match=rf"^{action}:{line}: find\.steps\[0\]: a step is"):
        asyncio.run(start_up())
