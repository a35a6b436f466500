"""Hubs and event delivery to a real listener on loopback, validated against the OAS."""

from __future__ import annotations

import asyncio
import os
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
from gateway.callbacks import CallbackPolicy
from gateway.config import DeliverySettings, GatewayConfig
from gateway.delivery import DeliveryWorker
from gateway.store import GatewayStore, OutboxEvent
from tests.conftest import API, ROOT, assert_valid, gateway_config, tuned
from tests.listener import Listener
from tests.test_main import free_port, start, stop, wait_ready

FAST = {
    "poll_seconds": 0.05,
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 0.2,
    "timeout_seconds": 1,
    "max_attempts": 3,
}


def fast_config(db: Path, store: Path, **delivery: Any) -> GatewayConfig:
    return tuned(
        gateway_config(db, store=store),
        worker={"poll_seconds": 0.05},
        delivery={**FAST, **delivery},
        detection_seconds=0.1,
    )


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener() as running:
        yield running


@pytest.fixture
def gateway(scratch_db: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(fast_config(scratch_db, tmp_path / "store.sqlite"))) as client:
        client.db = scratch_db  # type: ignore[attr-defined]
        client.store = tmp_path / "store.sqlite"  # type: ignore[attr-defined]
        wait_for_baseline(client.store)
        yield client


def wait_for_baseline(store: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(store) as conn:
            if conn.execute("SELECT 1 FROM watermark").fetchone():
                return
        time.sleep(0.02)
    raise AssertionError("the change detector never recorded its baseline")


def subscribe(client: TestClient, callback: str, query: str | None = None) -> dict[str, Any]:
    body = {"callback": callback, **({"query": query} if query else {})}
    response = client.post(f"{API}/hub", json=body)
    assert response.status_code == 201, response.text
    assert_valid("Hub", response.json())
    assert response.headers["Location"] == response.json()["href"]
    return response.json()


def assert_event(event: dict[str, Any]) -> None:
    assert_valid(event["eventType"], event)
    assert event["@type"] == event["eventType"] and event["eventId"]


def bill_in(client: TestClient, state: str) -> str:
    return client.get(f"{API}/customerBill?state={state}&limit=1").json()[0]["id"]


def set_state(client: TestClient, bill: str, state: str) -> None:
    response = client.patch(
        f"{API}/customerBill/{bill}",
        json={"state": state},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text


def test_hub_registration_and_deletion(gateway: TestClient, listener: Listener) -> None:
    hub = subscribe(gateway, f"{listener.base}/ok", "eventType=CustomerBillCreateEvent")
    assert hub["callback"] == f"{listener.base}/ok" and hub["@type"] == "Hub"
    assert gateway.delete(f"{API}/hub/{hub['id']}").status_code == 204
    again = gateway.delete(f"{API}/hub/{hub['id']}")
    assert again.status_code == 404
    assert_valid("Error", again.json())


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"query": "state=new"}, "'callback' is a required property"),
        ({"callback": "ftp://127.0.0.1/x"}, "http or https"),
        ({"callback": "http://10.1.2.3/listener"}, "non-public address"),
        ({"callback": "http://169.254.169.254/latest"}, "non-public address"),
        ({"callback": "http://[fd00:ec2::254]/"}, "non-public address"),
        ({"callback": "http://192.168.1.1:8080/"}, "non-public address"),
        ({"callback": "http://127.0.0.1/x", "query": "event.customerBill.nope=1"}, "nope"),
        ({"callback": "http://127.0.0.1/x", "query": "limit=5"}, "filters only"),
    ],
)
def test_bad_or_unsafe_hubs_are_400(gateway: TestClient, body: Any, words: str) -> None:
    response = gateway.post(f"{API}/hub", json=body)
    assert response.status_code == 400, response.text
    assert_valid("Error", response.json())
    assert words in response.json()["message"]


def test_loopback_is_refused_unless_the_configuration_allows_it(
    scratch_db: Path, tmp_path: Path
) -> None:
    config = fast_config(scratch_db, tmp_path / "store.sqlite")
    strict = tuned(config, allow_callback_networks=[])
    with TestClient(create_app(strict)) as client:
        for callback in ("http://127.0.0.1:9/x", "http://localhost:9/x", "http://[::1]:9/x"):
            response = client.post(f"{API}/hub", json={"callback": callback})
            assert response.status_code == 400 and "non-public" in response.json()["message"]


def test_each_event_type_follows_the_action_that_causes_it(
    gateway: TestClient, listener: Listener
) -> None:
    subscribe(gateway, f"{listener.base}/ok")
    bill = bill_in(gateway, "new")
    set_state(gateway, bill, "onHold")
    (changed,) = listener.wait_for("ok", 1, "CustomerBillStateChangeEvent")
    assert changed["event"]["customerBill"]["id"] == bill
    assert changed["event"]["customerBill"]["state"] == "onHold"

    account = gateway.get(f"{API}/appliedCustomerBillingRate?isBilled=false&limit=1").json()[0]
    created = gateway.post(
        f"{API}/customerBillOnDemand",
        json={"billingAccount": {"id": account["billingAccount"]["id"]}},
    ).json()
    (request_created,) = listener.wait_for("ok", 1, "CustomerBillOnDemandCreateEvent")
    assert request_created["event"]["customerBillOnDemand"]["id"] == created["id"]
    (request_done,) = listener.wait_for("ok", 1, "CustomerBillOnDemandStateChangeEvent")
    assert request_done["event"]["customerBillOnDemand"]["state"] == "done"
    (bill_created,) = listener.wait_for("ok", 1, "CustomerBillCreateEvent")
    new_bill = request_done["event"]["customerBillOnDemand"]["customerBill"]["id"]
    assert bill_created["event"]["customerBill"]["id"] == new_bill

    time.sleep(0.5)  # several detector cycles: the gateway's own changes are not repeated
    received = listener.events("ok")
    assert len(received) == 4
    for event in received:
        assert_event(event)
    paths = {r["path"].split("/listener/")[1] for r in listener.received}
    assert paths == {
        "customerBillStateChangeEvent",
        "customerBillOnDemandCreateEvent",
        "customerBillOnDemandStateChangeEvent",
        "customerBillCreateEvent",
    }
    assert len({e["eventId"] for e in received}) == 4


def test_changes_made_in_the_back_end_are_detected_once(
    gateway: TestClient, listener: Listener
) -> None:
    subscribe(gateway, f"{listener.base}/ok")
    db = gateway.db
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() + 3600))
    with sqlite3.connect(db) as conn:
        (bill,) = conn.execute("SELECT INV_ID FROM INV_HDR WHERE STAT_CD = 'S' LIMIT 1").fetchone()
        conn.execute(
            "UPDATE INV_HDR SET STAT_CD = 'C', OPEN_AMT = 0, UPD_TS = ? WHERE INV_ID = ?",
            (stamp, bill),
        )
        conn.execute(
            "INSERT INTO INV_HDR (INV_NO, ACCT_NO, INV_DT, PRD_FROM_DT, PRD_TO_DT, DUE_DT, STAT_CD,"
            " RUN_TYP, CAT_CD, NET_AMT, TAX_AMT, GRS_AMT, OPEN_AMT, CURR_CD, ARCH_KEY, UPD_TS)"
            " SELECT 'MAN-1', ACCT_NO, '20250120', '20250101', '20250120', '20250203', 'N',"
            " 'D', 'NRM', 100, 19, 119, 119, 'EUR', 'DMS/MAN-1.pdf', ? FROM ACCT_MASTER LIMIT 1",
            (stamp,),
        )
        (created,) = conn.execute("SELECT INV_ID FROM INV_HDR WHERE INV_NO = 'MAN-1'").fetchone()
    (changed,) = listener.wait_for("ok", 1, "CustomerBillStateChangeEvent")
    assert changed["event"]["customerBill"]["id"] == str(bill)
    assert changed["event"]["customerBill"]["state"] == "settled"
    (new,) = listener.wait_for("ok", 1, "CustomerBillCreateEvent")
    assert new["event"]["customerBill"]["id"] == str(created)
    time.sleep(0.6)
    assert len(listener.events("ok")) == 2
    for event in listener.events("ok"):
        assert_event(event)


def test_hub_query_selects_events(gateway: TestClient, listener: Listener) -> None:
    subscribe(
        gateway,
        f"{listener.base}/ok-settled",
        "eventType=CustomerBillStateChangeEvent&event.customerBill.state=settled",
    )
    subscribe(gateway, f"{listener.base}/ok-all")
    sent = bill_in(gateway, "sent")
    new = bill_in(gateway, "new")
    set_state(gateway, new, "onHold")
    set_state(gateway, sent, "settled")
    listener.wait_for("ok-all", 2)
    (only,) = listener.wait_for("ok-settled", 1)
    assert only["event"]["customerBill"]["id"] == sent
    time.sleep(0.3)
    assert len(listener.events("ok-settled")) == 1


def test_a_failing_listener_gets_the_same_event_again_until_it_takes_it(
    gateway: TestClient, listener: Listener
) -> None:
    subscribe(gateway, f"{listener.base}/flaky2")
    set_state(gateway, bill_in(gateway, "new"), "onHold")
    (event,) = listener.wait_for("flaky2", 1)
    assert listener.attempts[("flaky2", event["eventId"])] == 3


def test_a_dead_listener_is_dead_lettered_and_delays_nobody(
    gateway: TestClient, listener: Listener
) -> None:
    subscribe(gateway, f"{listener.base}/dead")
    subscribe(gateway, f"{listener.base}/slow")
    subscribe(gateway, f"{listener.base}/ok")
    started = time.monotonic()
    set_state(gateway, bill_in(gateway, "new"), "onHold")
    listener.wait_for("ok", 1)
    assert time.monotonic() - started < 0.9  # the slow one times out only after 1 s
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(gateway.store) as conn:
            dead = conn.execute(
                "SELECT o.attempts, o.last_error FROM outbox o JOIN hub h ON h.id = o.hub_id "
                "WHERE h.callback LIKE '%/dead' AND o.state = 'dead'"
            ).fetchall()
        if dead:
            break
        time.sleep(0.05)
    assert dead == [(3, "HTTP 500")]
    (event_id,) = {e for h, e in listener.attempts if h == "dead"}
    time.sleep(0.3)
    assert listener.attempts[("dead", event_id)] == 3  # and no more


def test_deleting_a_hub_stops_its_deliveries(gateway: TestClient, listener: Listener) -> None:
    hub = subscribe(gateway, f"{listener.base}/flaky100")
    subscribe(gateway, f"{listener.base}/ok")
    set_state(gateway, bill_in(gateway, "new"), "onHold")
    listener.wait_for("ok", 1)
    assert gateway.delete(f"{API}/hub/{hub['id']}").status_code == 204
    tried = sum(n for (h, _), n in listener.attempts.items() if h == "flaky100")
    set_state(gateway, bill_in(gateway, "new"), "validated")
    listener.wait_for("ok", 2)
    time.sleep(0.4)
    # At most the one attempt already in flight at deletion; nothing queued, nothing new.
    assert sum(n for (h, _), n in listener.attempts.items() if h == "flaky100") <= tried + 1
    assert len(listener.events("ok")) == 2
    with sqlite3.connect(gateway.store) as conn:
        queued = conn.execute("SELECT count(*) FROM outbox WHERE hub_id = ?", (hub["id"],))
        assert queued.fetchone() == (0,)


def test_no_event_is_lost_when_the_gateway_is_killed_during_delivery(
    scratch_db: Path, tmp_path: Path, listener: Listener
) -> None:
    store = tmp_path / "store.sqlite"
    config = tmp_path / "gateway.yaml"
    default = (ROOT / "config" / "default.yaml").read_text()
    config.write_text(
        default.replace("../mappings/", f"{ROOT}/mappings/")
        .replace("    timeout_seconds: 5\n", "    timeout_seconds: 1\n")
        .replace("    retry_base_seconds: 1    #", "    retry_base_seconds: 0.1  #")
    )
    env = {"LEGACY_DB": str(scratch_db), "GATEWAY_STORE": str(store)}
    port = free_port()
    first = start({**env, "PORT": str(port)}, "--config", str(config))
    base = f"http://127.0.0.1:{port}{API}"
    try:
        wait_ready(f"{base}/customerBill?limit=1", first)
        httpx.post(f"{base}/hub", json={"callback": f"{listener.base}/flaky1-a"}, timeout=5)
        httpx.post(f"{base}/hub", json={"callback": f"{listener.base}/ok-b"}, timeout=5)
        bills = httpx.get(f"{base}/customerBill?state=new&limit=8", timeout=5).json()
        for bill in bills:
            response = httpx.patch(
                bill["href"],
                json={"state": "onHold"},
                timeout=5,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert response.status_code == 200
        listener.wait_for("ok-b", 1)
        os.kill(first.pid, signal.SIGKILL)  # mid-delivery: flaky1-a is still retrying
        first.wait(timeout=10)
    finally:
        stop(first)
    port = free_port()
    second = start({**env, "PORT": str(port)}, "--config", str(config))
    try:
        wait_ready(f"http://127.0.0.1:{port}{API}/customerBill?limit=1", second)
        # Redeliveries after the kill count here too: these only wait for the bulk.
        listener.wait_for("flaky1-a", 8, seconds=30)
        listener.wait_for("ok-b", 8, seconds=30)
        deadline = time.monotonic() + 10  # the last batch is recorded just after it is sent
        while time.monotonic() < deadline:
            with sqlite3.connect(store) as conn:
                states = {r[0] for r in conn.execute("SELECT state FROM outbox")}
            if states == {"delivered"}:
                break
            time.sleep(0.05)
    finally:
        stop(second)
    with sqlite3.connect(store) as conn:
        queued = {r[0] for r in conn.execute("SELECT event_id FROM outbox")}
    assert len(queued) == 8 and states == {"delivered"}
    # Every row is marked delivered only after the listener acknowledged it.
    a, b = listener.events("flaky1-a"), listener.events("ok-b")
    assert {e["eventId"] for e in a} == queued == {e["eventId"] for e in b}
    for event in a:
        assert_event(event)


def test_workers_sharing_a_store_send_a_hubs_events_once_each_in_order(
    tmp_path: Path, listener: Listener
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite'}"
    settings = DeliverySettings(retry_base_seconds=0.01, retry_max_seconds=0.05, poll_seconds=0.05)
    policy = CallbackPolicy(["127.0.0.0/8"])
    hub_url = f"{listener.base}/flaky1-shared"  # every event fails once, then is taken

    async def scenario() -> list[str]:
        stores = [GatewayStore(url) for _ in range(3)]  # three gateways, one store
        for store in stores:
            await store.open()
        hub_id = await stores[0].add_hub(hub_url, None)
        queued = [f"event-{n:03}" for n in range(120)]  # more than one claim's batch
        async with stores[0].transaction() as conn:
            await stores[0].enqueue_events(
                conn,
                [
                    OutboxEvent(e, hub_id, hub_url, "E", f'{{"eventId": "{e}", "eventType": "E"}}')
                    for e in queued
                ],
            )
        workers = [DeliveryWorker(store, settings, policy) for store in stores]
        tasks = [asyncio.create_task(worker.run()) for worker in workers]
        try:
            deadline = time.monotonic() + 60
            while len({e["eventId"] for e in listener.events("flaky1-shared")}) < len(queued):
                assert time.monotonic() < deadline, "not every event was delivered"
                await asyncio.sleep(0.05)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for worker, store in zip(workers, stores, strict=True):
                await worker.close()
                await store.close()
        return queued

    queued = asyncio.run(scenario())
    received = [e["eventId"] for e in listener.events("flaky1-shared")]
    # One sender at a time (the hub's lease): taken in the order queued, none twice.
    assert received == queued


class CountingStore(GatewayStore):
    """The real store, counting the hub leases it grants (taken or renewed)."""

    granted = 0

    async def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        taken = await super().take_lease(name, owner, seconds)
        if taken and name.startswith("hub:"):
            CountingStore.granted += 1
        return taken


def test_a_hubs_lease_is_taken_once_for_many_batches_not_per_batch(
    tmp_path: Path, listener: Listener
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite'}"
    settings = DeliverySettings(poll_seconds=0.05, timeout_seconds=5)  # lease: 16 s
    policy = CallbackPolicy(["127.0.0.0/8"])
    hub_url = f"{listener.base}/ok-batches"
    queued = [f"event-{n:03}" for n in range(300)]  # six claims' batches

    async def scenario() -> None:
        CountingStore.granted = 0
        stores = [CountingStore(url) for _ in range(2)]  # two gateways, one store
        for store in stores:
            await store.open()
        hub_id = await stores[0].add_hub(hub_url, None)
        async with stores[0].transaction() as conn:
            await stores[0].enqueue_events(
                conn,
                [OutboxEvent(e, hub_id, hub_url, "E", f'{{"eventId": "{e}"}}') for e in queued],
            )
        workers = [DeliveryWorker(store, settings, policy) for store in stores]
        tasks = [asyncio.create_task(worker.run()) for worker in workers]
        try:
            deadline = time.monotonic() + 60
            while len(listener.events("ok-batches")) < len(queued):
                assert time.monotonic() < deadline, "not every event was delivered"
                await asyncio.sleep(0.05)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for worker, store in zip(workers, stores, strict=True):
                await worker.close()
                await store.close()

    asyncio.run(scenario())
    assert [e["eventId"] for e in listener.events("ok-batches")] == queued  # once each, in order
    # Renewed when what is left might not cover a batch (after 5 s), not for each of the six.
    assert 1 <= CountingStore.granted < 6
