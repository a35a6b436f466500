"""Callers through the whole gateway: scopes per operation and the billing-account scope.

A gateway over the demo database with `auth` on; tokens are signed with a key made
here. Each caller sees, counts, changes and hears about only its own accounts.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.testclient import TestClient
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from gateway.__main__ import exposure_refusal
from gateway.app import create_app
from gateway.auth import AuthSettings
from gateway.config import GatewayConfig, load_config
from simulators.rest_billing import create_app as rest_simulator
from simulators.rest_billing import seed as rest_seed
from simulators.soap_billing import create_app as soap_simulator
from simulators.soap_billing import seed as soap_seed
from tests.conftest import API, ROOT, assert_valid, fetch_all, gateway_config, tuned
from tests.listener import Listener
from tests.servers import ThreadedServer
from tests.tokens import ISSUER, Signer

ALICE = ("BA-000003",)
BOB = ("BA-000010", "BA-000011")
EVERY_SCOPE = "tmf678:read tmf678:write tmf678:order tmf678:hub"


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()), "ES256", "gw-test")


def secure(config: GatewayConfig, signer: Signer, jwks: Path) -> GatewayConfig:
    jwks.write_text(json.dumps({"keys": [signer.jwk]}))
    auth = AuthSettings(enabled=True, issuer=ISSUER, jwks_file=jwks)
    return config.model_copy(update={"auth": auth})


@pytest.fixture
def gateway(scratch_db: Path, tmp_path: Path, signer: Signer) -> Iterator[TestClient]:
    config = tuned(
        gateway_config(scratch_db, store=tmp_path / "store.sqlite"),
        worker={"poll_seconds": 0.05},
        delivery={"poll_seconds": 0.05, "timeout_seconds": 1},
        detection_seconds=0.1,
    )
    with TestClient(create_app(secure(config, signer, tmp_path / "jwks.json"))) as client:
        client.db = scratch_db  # type: ignore[attr-defined]
        client.store = tmp_path / "store.sqlite"  # type: ignore[attr-defined]
        yield client


def bearer(
    signer: Signer, accounts: tuple[str, ...] | None, scope: str = EVERY_SCOPE, **claims: Any
) -> dict[str, str]:
    if accounts is None:
        scope += " tmf678:all-accounts"
    token = signer.token(scope=scope, billing_accounts=list(accounts or ()), **claims)
    return {"Authorization": f"Bearer {token}"}


def sql(db: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(statement, params).fetchall()


def marks(accounts: tuple[str, ...]) -> str:
    return ",".join("?" * len(accounts))


OPERATIONS = [
    ("GET", "customerBill", None, "tmf678:read"),
    ("GET", "customerBill/1", None, "tmf678:read"),
    ("GET", "appliedCustomerBillingRate", None, "tmf678:read"),
    ("GET", "appliedCustomerBillingRate/1", None, "tmf678:read"),
    ("GET", "billCycle", None, "tmf678:read"),
    ("GET", "billCycle/1", None, "tmf678:read"),
    ("GET", "customerBillOnDemand", None, "tmf678:read"),
    ("GET", "customerBillOnDemand/x", None, "tmf678:read"),
    ("PATCH", "customerBill/1", {"state": "onHold"}, "tmf678:write"),
    ("POST", "customerBillOnDemand", {"billingAccount": {"id": "BA-000003"}}, "tmf678:order"),
    ("POST", "hub", {"callback": "http://127.0.0.1:9/x"}, "tmf678:hub"),
    ("DELETE", "hub/x", None, "tmf678:hub"),
]


@pytest.mark.parametrize(("method", "path", "body", "scope"), OPERATIONS)
def test_every_operation_needs_a_token_with_its_scope(
    gateway: TestClient, signer: Signer, method: str, path: str, body: Any, scope: str
) -> None:
    url = f"{API}/{path}"
    anonymous = gateway.request(method, url, json=body)
    assert anonymous.status_code == 401
    assert_valid("Error", anonymous.json())
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    others = " ".join(s for s in EVERY_SCOPE.split() if s != scope)
    lacking = gateway.request(method, url, json=body, headers=bearer(signer, ALICE, others))
    assert lacking.status_code == 403
    assert_valid("Error", lacking.json())
    assert f'error="insufficient_scope", scope="{scope}"' in lacking.headers["www-authenticate"]
    allowed = gateway.request(method, url, json=body, headers=bearer(signer, ALICE, scope))
    assert allowed.status_code not in (401, 403), allowed.text
    bad = signer.token(scope=scope, iss="https://elsewhere.example")
    wrong = gateway.request(method, url, json=body, headers={"Authorization": f"Bearer {bad}"})
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("collection", "table"),
    [("customerBill", "INV_HDR"), ("appliedCustomerBillingRate", "CHG_LINE")],
)
def test_lists_and_totals_hold_only_the_callers_accounts(
    gateway: TestClient, signer: Signer, collection: str, table: str
) -> None:
    for accounts in (ALICE, BOB):
        gateway.headers.update(bearer(signer, accounts))
        items = fetch_all(gateway, collection)
        expected = sql(
            gateway.db,
            f"SELECT count(*) FROM {table} WHERE ACCT_NO IN ({marks(accounts)})",
            *accounts,
        )[0][0]
        assert expected > 0 and len(items) == expected
        assert {i["billingAccount"]["id"] for i in items} == set(accounts)
        page = gateway.get(f"{API}/{collection}?limit=1")
        assert page.headers["X-Total-Count"] == str(expected)
        # A filter for someone else's account finds nothing, and counts nothing.
        other = gateway.get(f"{API}/{collection}?billingAccount.id=BA-000020")
        assert other.json() == [] and other.headers["X-Total-Count"] == "0"
    gateway.headers.update(bearer(signer, None))
    everything = gateway.get(f"{API}/{collection}?limit=1").headers["X-Total-Count"]
    assert everything == str(sql(gateway.db, f"SELECT count(*) FROM {table}")[0][0])


def test_bill_cycles_are_shared_and_an_empty_scope_sees_no_bills(
    gateway: TestClient, signer: Signer
) -> None:
    gateway.headers.update(bearer(signer, ()))
    cycles = fetch_all(gateway, "billCycle")
    assert len(cycles) == sql(gateway.db, "SELECT count(*) FROM BILL_RUN")[0][0]
    bills = gateway.get(f"{API}/customerBill")
    assert bills.json() == [] and bills.headers["X-Total-Count"] == "0"


def test_a_resource_outside_the_scope_is_a_404_like_one_that_does_not_exist(
    gateway: TestClient, signer: Signer
) -> None:
    (theirs,) = sql(gateway.db, "SELECT min(INV_ID) FROM INV_HDR WHERE ACCT_NO = ?", BOB[0])[0]
    (rate,) = sql(gateway.db, "SELECT min(CHG_ID) FROM CHG_LINE WHERE ACCT_NO = ?", BOB[0])[0]
    gateway.headers.update(bearer(signer, ALICE))
    for collection, ident in (("customerBill", theirs), ("appliedCustomerBillingRate", rate)):
        hidden = gateway.get(f"{API}/{collection}/{ident}")
        missing = gateway.get(f"{API}/{collection}/999999")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == {
            **missing.json(),
            "message": missing.json()["message"].replace("999999", str(ident)),
        }
    gateway.headers.update(bearer(signer, BOB))
    assert gateway.get(f"{API}/customerBill/{theirs}").status_code == 200


def test_patch_outside_the_scope_is_a_404_and_changes_nothing(
    gateway: TestClient, signer: Signer
) -> None:
    ident, state = sql(
        gateway.db,
        "SELECT INV_ID, STAT_CD FROM INV_HDR WHERE ACCT_NO = ? AND STAT_CD = 'N'",
        BOB[0],
    )[0]
    gateway.headers.update(bearer(signer, ALICE))
    refused = gateway.patch(f"{API}/customerBill/{ident}", json={"state": "onHold"})
    assert refused.status_code == 404
    assert_valid("Error", refused.json())
    assert sql(gateway.db, "SELECT STAT_CD FROM INV_HDR WHERE INV_ID = ?", ident) == [(state,)]
    gateway.headers.update(bearer(signer, BOB))
    with capture_logs(processors=[merge_contextvars]) as logs:
        done = gateway.patch(
            f"{API}/customerBill/{ident}",
            json={"state": "onHold"},
            headers={"X-Request-ID": "audit-1"},
        )
    assert done.status_code == 200 and done.json()["state"] == "onHold"
    (audit,) = [e for e in logs if e["event"] == "customerBill_patched"]
    assert audit["subject"] == "alice" and audit["client_id"] == "billing-portal"
    assert audit["request_id"] == "audit-1" and audit["id"] == str(ident)
    assert audit["before"]["state"] == "new" and audit["after"]["state"] == "onHold"


def test_bills_on_demand_only_for_the_callers_accounts(gateway: TestClient, signer: Signer) -> None:
    gateway.headers.update(bearer(signer, ALICE))
    before = sql(gateway.store, "SELECT count(*) FROM bill_on_demand")
    refused = gateway.post(f"{API}/customerBillOnDemand", json={"billingAccount": {"id": BOB[0]}})
    assert refused.status_code == 400 and refused.json()["code"] == "INVALID_BILLING_ACCOUNT"
    unknown = gateway.post(f"{API}/customerBillOnDemand", json={"billingAccount": {"id": "BA-9"}})
    assert unknown.json()["message"] == refused.json()["message"].replace(BOB[0], "BA-9")
    assert sql(gateway.store, "SELECT count(*) FROM bill_on_demand") == before
    mine = gateway.post(f"{API}/customerBillOnDemand", json={"billingAccount": {"id": ALICE[0]}})
    assert mine.status_code == 201
    gateway.headers.update(bearer(signer, BOB))
    assert gateway.get(f"{API}/customerBillOnDemand").json() == []
    assert gateway.get(f"{API}/customerBillOnDemand/{mine.json()['id']}").status_code == 404
    gateway.headers.update(bearer(signer, ALICE))
    listed = gateway.get(f"{API}/customerBillOnDemand").json()
    assert [r["id"] for r in listed] == [mine.json()["id"]]


def test_hubs_belong_to_their_callers_and_hear_only_their_accounts(
    gateway: TestClient, signer: Signer
) -> None:
    alice, bob, office = bearer(signer, ALICE), bearer(signer, BOB, sub="bob"), bearer(signer, None)
    mine = sql(
        gateway.db,
        "SELECT min(INV_ID) FROM INV_HDR WHERE ACCT_NO = ? AND STAT_CD IN ('N', 'S', 'V', 'P')",
        ALICE[0],
    )[0][0]
    theirs = sql(
        gateway.db,
        "SELECT min(INV_ID) FROM INV_HDR WHERE ACCT_NO = ? AND STAT_CD IN ('N', 'S', 'V', 'P')",
        BOB[0],
    )[0][0]
    with Listener() as listener:
        hub_a = gateway.post(
            f"{API}/hub", json={"callback": f"{listener.base}/alice"}, headers=alice
        )
        hub_b = gateway.post(f"{API}/hub", json={"callback": f"{listener.base}/bob"}, headers=bob)
        assert hub_a.status_code == hub_b.status_code == 201
        stolen = gateway.delete(f"{API}/hub/{hub_a.json()['id']}", headers=bob)
        assert stolen.status_code == 404
        assert_valid("Error", stolen.json())
        for ident in (mine, theirs):
            changed = gateway.patch(
                f"{API}/customerBill/{ident}", json={"state": "onHold"}, headers=office
            )
            assert changed.status_code == 200
        (heard_a,) = listener.wait_for("alice", 1, "CustomerBillStateChangeEvent")
        (heard_b,) = listener.wait_for("bob", 1, "CustomerBillStateChangeEvent")
        assert heard_a["event"]["customerBill"]["id"] == str(mine)
        assert heard_b["event"]["customerBill"]["id"] == str(theirs)
        # Once every queued delivery has gone out (the worker records each just after the
        # listener's answer), neither heard of the other's bill.
        deadline = time.monotonic() + 10
        while sql(gateway.store, "SELECT count(*) FROM outbox WHERE state != 'delivered'") != [
            (0,)
        ]:
            assert time.monotonic() < deadline, "deliveries still pending"
            time.sleep(0.02)
        assert {
            e["event"]["customerBill"]["billingAccount"]["id"] for e in listener.events("alice")
        } == {ALICE[0]}
        assert {
            e["event"]["customerBill"]["billingAccount"]["id"] for e in listener.events("bob")
        } <= set(BOB)
        assert gateway.delete(f"{API}/hub/{hub_a.json()['id']}", headers=alice).status_code == 204


def test_anonymous_mode_and_host_built_hrefs_are_for_loopback_only(demo_db: Path) -> None:
    config = gateway_config(demo_db)
    assert exposure_refusal(config, "127.0.0.1") is None
    assert exposure_refusal(config, "localhost") is None
    assert exposure_refusal(config, "::1") is None
    refusal = exposure_refusal(config, "0.0.0.0")
    assert refusal is not None and "auth is off" in refusal
    said = config.model_copy(update={"auth": AuthSettings(anonymous_beyond_loopback=True)})
    refusal = exposure_refusal(said, "0.0.0.0")
    assert refusal is not None and "api.public_base_url" in refusal
    public = said.model_copy(
        update={"api": said.api.model_copy(update={"allowed_hosts": ["api.example.com"]})}
    )
    assert exposure_refusal(public, "0.0.0.0") is None


def test_only_configured_hosts_are_answered(demo_db: Path) -> None:
    config = gateway_config(demo_db)
    api = config.api.model_copy(update={"allowed_hosts": ["api.example.com"]})
    with TestClient(create_app(config.model_copy(update={"api": api}))) as client:
        good = client.get(f"{API}/billCycle/1", headers={"Host": "api.example.com:8443"})
        assert good.status_code == 200
        assert good.json()["href"].startswith("http://api.example.com:8443/")
        evil = client.get(f"{API}/billCycle/1", headers={"Host": "evil.example"})
        assert evil.status_code == 400 and evil.json()["code"] == "INVALID_HOST"
        assert_valid("Error", evil.json())


def test_the_account_scope_holds_across_federated_back_ends(
    scratch_db: Path, tmp_path: Path, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = ("BA-000003", "ENT-0003", "CUST00002")
    rest, soap = rest_simulator(rest_seed()), soap_simulator(soap_seed())
    with ThreadedServer(rest) as rest_server, ThreadedServer(soap) as soap_server:
        monkeypatch.setenv("LEGACY_DB", str(scratch_db))
        monkeypatch.setenv("ENTERPRISE_URL", rest_server.base)
        monkeypatch.setenv("CONSUMER_WSDL", f"{soap_server.base}/billing.wsdl")
        monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
        config = secure(load_config(ROOT / "config" / "federated.yaml"), signer, tmp_path / "k")
        with TestClient(create_app(config)) as client:
            client.headers.update(bearer(signer, None))
            everything = fetch_all(client, "customerBill")
            expected = sorted(b["id"] for b in everything if b["billingAccount"]["id"] in mine)
            assert {b["id"][:2] for b in everything if b["id"] in expected} == {"L-", "E-", "S-"}
            client.headers.update(bearer(signer, mine))
            seen = fetch_all(client, "customerBill")
            assert sorted(b["id"] for b in seen) == expected
            page = client.get(f"{API}/customerBill?limit=1&sort=-billDate")
            assert page.headers["X-Total-Count"] == str(len(expected))
            outside = next(b["id"] for b in everything if b["billingAccount"]["id"] not in mine)
            assert client.get(f"{API}/customerBill/{outside}").status_code == 404
            patched = client.patch(f"{API}/customerBill/{outside}", json={"state": "onHold"})
            assert patched.status_code == 404
            for account, allowed in (("ENT-0001", False), ("ENT-0003", True)):
                order = {"billingAccount": {"id": account}}
                made = client.post(f"{API}/customerBillOnDemand", json=order)
                assert made.status_code == (201 if allowed else 400), made.text
            listed = fetch_all(client, "customerBillOnDemand")
            assert [r["billingAccount"]["id"] for r in listed] == ["ENT-0003"]
            # A scoped subscriber hears of its accounts' bills only, whichever back end.
            movable = [b for b in everything if b["state"] in ("new", "sent", "partiallyPaid")]
            inside = next(
                b for b in movable if b["id"].startswith("E-") and b["billingAccount"]["id"] in mine
            )
            outside = next(
                b
                for b in movable
                if b["id"].startswith("E-") and b["billingAccount"]["id"] not in mine
            )
            with Listener() as listener:
                hub = client.post(f"{API}/hub", json={"callback": f"{listener.base}/mine"})
                assert hub.status_code == 201
                office = bearer(signer, None)
                for bill in (outside, inside):
                    changed = client.patch(
                        f"{API}/customerBill/{bill['id']}", json={"state": "onHold"}, headers=office
                    )
                    assert changed.status_code == 200, changed.text
                (heard,) = listener.wait_for("mine", 1, "CustomerBillStateChangeEvent")
                assert heard["event"]["customerBill"]["id"] == inside["id"]
                time.sleep(0.5)  # time enough for a wrong delivery to arrive too
                # (The on-demand request above may end meanwhile: its event names no bill.)
                heard_of = {
                    e["event"]["customerBill"]["id"]
                    for e in listener.events("mine")
                    if "customerBill" in e["event"]
                }
                assert outside["id"] not in heard_of
