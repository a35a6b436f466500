"""Several real gateway processes sharing one PostgreSQL store, over the SQLite demo back end.

Each test starts `python -m gateway` processes (configured through the environment, on free
ports) on a PostgreSQL database of its own, created for the test and dropped after it.
Where PostgreSQL is not reachable the tests are skipped (how to enable them: the message),
or fail when CI=true. What they hold the gateways to:

- every on-demand request reaches one final state, with at most one bill (exactly one when
  done), also when the gateway running it is killed outright (kill -9);
- every event reaches every hub at least once, with the event id and body it was queued
  with, and the events about one resource in the order they were queued;
- each back end's change detector runs in one gateway at a time (a lease in the store);
- SIGTERM lets requests in flight finish and hands the gateway's leases back at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from gateway import migrations
from simulators.rest_billing import create_app as create_rest_simulator
from simulators.rest_billing import seed as rest_seed
from tests.conftest import API, ROOT, assert_valid
from tests.faults import FaultProxy
from tests.listener import Listener
from tests.servers import ThreadedServer
from tests.test_main import free_port
from tests.test_store import HOW_TO_ENABLE, POSTGRES_SERVER, _admin

T = TypeVar("T")
FINAL = {"done", "rejected", "terminatedWithError"}


@pytest.fixture
def store_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped after it: the gateways' store."""
    name = f"gateway_instances_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin([f'CREATE DATABASE "{name}"']))
    except (OSError, SQLAlchemyError, TimeoutError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{HOW_TO_ENABLE} (CI=true: required): {exc}")
        pytest.skip(f"{HOW_TO_ENABLE}: {exc}")
    yield f"{POSTGRES_SERVER}/{name}"
    asyncio.run(_admin([f'DROP DATABASE "{name}" WITH (FORCE)']))


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener() as server:
        yield server


def store_rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of a query on the shared store, read as an operator would."""

    async def query() -> list[tuple[Any, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [tuple(r) for r in await conn.execute(text(sql), params)]
        finally:
            await engine.dispose()

    return asyncio.run(query())


def legacy(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql, params).fetchall()


def eventually(check: Callable[[], T | None], what: str, seconds: float = 30) -> T:
    """The first truthy result of `check`, polled until `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds:g} s: {what}")


class Instance:
    """One gateway process; its log (JSON lines) goes to a file the test reads."""

    def __init__(self, name: str, env: dict[str, str], config: Path, directory: Path) -> None:
        self.name = name
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}{API}"
        self.log_path = directory / f"{name}.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(config)],
                cwd=ROOT,
                env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{self.name} exited:\n{self.log_path.read_text()}"
            try:
                httpx.get(f"{self.api}/customerBill?limit=1", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"{self.name} did not start:\n{self.log_path.read_text()}")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log records named `name`."""
        records = []
        for line in self.log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                records.append(record)
        return records

    def owners(self) -> set[str]:
        """The lease owner ids of this gateway's workers (as they logged them)."""
        names = ("on_demand_worker_started", "delivery_worker_started")
        found = {r["owner"] for name in names for r in self.events(name)}
        return found | {r["owner"] for r in self.events("change_detection_lease_taken")}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def instance_config(tmp_path: Path, *, lease: float, pause: float, detect: float) -> Path:
    """The default configuration, with the background work tuned for a test."""
    text_ = (ROOT / "config" / "default.yaml").read_text()
    replacements = {
        "../mappings/": f"{ROOT}/mappings/",
        "    poll_seconds: 1          #": "    poll_seconds: 0.1        #",
        "    lease_seconds: 30        #": (
            f"    lease_seconds: {lease}\n    pause_after_action_seconds: {pause}\n    #"
        ),
        "    retry_base_seconds: 1    #": "    retry_base_seconds: 0.1  #",
        "    timeout_seconds: 5\n": "    timeout_seconds: 1\n",
        "interval_seconds: 5}": f"interval_seconds: {detect}}}",
    }
    for old, new in replacements.items():
        assert old in text_, old
        text_ = text_.replace(old, new)
    config = tmp_path / f"gateway-{lease}-{pause}-{detect}.yaml"
    config.write_text(text_)
    return config


def unbilled_accounts(db: Path) -> list[str]:
    rows = legacy(
        db,
        "SELECT c.ACCT_NO FROM CHG_LINE c JOIN ACCT_MASTER a ON a.ACCT_NO = c.ACCT_NO "
        "WHERE c.INV_ID IS NULL AND a.STAT_CD = 'A' GROUP BY c.ACCT_NO ORDER BY c.ACCT_NO",
    )
    return [r[0] for r in rows]


def request_bill(instance: Instance, account: str) -> str:
    response = httpx.post(
        f"{instance.api}/customerBillOnDemand", json={"billingAccount": {"id": account}}, timeout=10
    )
    assert response.status_code == 201, response.text
    ident: str = response.json()["id"]
    return ident


def subject(event: dict[str, Any]) -> tuple[str, str]:
    """The resource an event is about: its type and id."""
    ((kind, resource),) = event["event"].items()
    return kind, resource["id"]


def detector_holders(instances: list[Instance]) -> list[Instance]:
    return [i for i in instances if i.events("change_detection_lease_taken")]


def test_three_instances_share_one_store_and_lose_nothing_to_a_kill_9(
    store_url: str, scratch_db: Path, tmp_path: Path, listener: Listener
) -> None:
    config = instance_config(tmp_path, lease=3, pause=1, detect=0.5)
    env = {"LEGACY_DB": str(scratch_db), "GATEWAY_STORE_URL": store_url}
    # All three start at once on the empty database: they migrate it one after the other.
    instances = [Instance(f"gw{i}", env, config, tmp_path) for i in range(3)]
    try:
        for instance in instances:
            instance.wait_ready()
        assert store_rows(store_url, "SELECT version_num FROM alembic_version") == [
            (migrations.head(),)
        ]
        hubs = ("ok-a", "flaky1-b")  # flaky1: each event's first delivery fails
        for hub, instance in zip(hubs, instances, strict=False):
            response = httpx.post(
                f"{instance.api}/hub", json={"callback": f"{listener.base}/{hub}"}, timeout=10
            )
            assert response.status_code == 201, response.text

        # One gateway polls the back end; the others wait for its lease.
        (victim,) = eventually(lambda: detector_holders(instances), "a detector lease taken")
        time.sleep(1.5)  # a few polling intervals: still the only holder
        assert detector_holders(instances) == [victim]
        survivors = [i for i in instances if i is not victim]

        accounts = unbilled_accounts(scratch_db)[:24]
        requests: list[str] = []
        for n, account in enumerate(accounts[:12]):
            requests.append(request_bill(instances[n % 3], account))
        requests.append(request_bill(victim, accounts[0]))  # its charges are billed: rejected

        # Kill the detector's gateway while it runs requests whose bills the back end has
        # made and it has not recorded yet.
        def caught_mid_request() -> bool:
            owners = victim.owners()
            running = store_rows(
                store_url,
                "SELECT id FROM bill_on_demand"
                " WHERE state = 'inProgress' AND lease_owner = ANY(:o)",
                o=list(owners),
            )
            return any(
                legacy(scratch_db, "SELECT 1 FROM INV_HDR WHERE EXT_REF = ?", ident)
                for (ident,) in running
            )

        eventually(caught_mid_request, "the victim mid-request", seconds=20)
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(timeout=10)

        for n, account in enumerate(accounts[12:]):
            requests.append(request_bill(survivors[n % 2], account))
        # A change made in the back end by others, after the kill: the detector's lease runs
        # out and another gateway takes the detector over.
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() + 3600))
        (changed_bill,) = legacy(scratch_db, "SELECT INV_ID FROM INV_HDR WHERE STAT_CD = 'S'")[0]
        legacy(
            scratch_db,
            "UPDATE INV_HDR SET STAT_CD = 'C', OPEN_AMT = 0, UPD_TS = ? WHERE INV_ID = ?",
            stamp,
            changed_bill,
        )

        def all_final() -> list[dict[str, Any]] | None:
            bodies = []
            for n, ident in enumerate(requests):
                url = f"{survivors[n % 2].api}/customerBillOnDemand/{ident}"
                body = httpx.get(url, timeout=10).json()
                if body["state"] not in FINAL:
                    return None
                bodies.append(body)
            return bodies

        finished = eventually(all_final, "every request in a final state", seconds=60)

        def all_delivered() -> bool:
            states = store_rows(store_url, "SELECT DISTINCT state FROM outbox")
            return states == [("delivered",)]

        listener.wait_for("ok-a", 1, "CustomerBillStateChangeEvent", seconds=30)
        eventually(all_delivered, "every queued event delivered", seconds=60)
        new_holders = eventually(
            lambda: [i for i in detector_holders(survivors)], "the detector taken over"
        )
    finally:
        for instance in instances:
            instance.stop()

    # Every request ended once: one bill for each done, none otherwise.
    for body in finished:
        assert_valid("CustomerBillOnDemand", body)
        bills = legacy(scratch_db, "SELECT INV_ID FROM INV_HDR WHERE EXT_REF = ?", body["id"])
        if body["state"] == "done":
            assert [str(b) for (b,) in bills] == [body["customerBill"]["id"]], body
        else:
            assert bills == [], body
    states = [b["state"] for b in finished]
    assert states.count("done") == len(accounts) and states.count("rejected") == 1, states

    # Every event queued reached each hub, with its id and body, in order per resource.
    queued = store_rows(
        store_url,
        "SELECT h.callback, o.seq, o.event_id, o.payload FROM outbox o"
        " JOIN hub h ON h.id = o.hub_id ORDER BY o.seq",
    )
    for hub in hubs:
        mine = [
            (seq, ident, json.loads(payload))
            for cb, seq, ident, payload in queued
            if cb.endswith(f"/{hub}")
        ]
        received = listener.events(hub)
        assert {e["eventId"] for e in received} == {ident for _, ident, _ in mine}
        sent = {ident: payload for _, ident, payload in mine}
        for event in received:  # a redelivery is the same event: same id, same body
            assert event == sent[event["eventId"]]
            assert_valid(event["eventType"], event)
        position = {ident: seq for seq, ident, _ in mine}
        first_seen: dict[str, int] = {}
        for event in received:
            first_seen.setdefault(event["eventId"], position[event["eventId"]])
        by_subject: dict[tuple[str, str], list[int]] = defaultdict(list)
        for event in received:
            if position[event["eventId"]] == first_seen.get(event["eventId"]):
                seqs = by_subject[subject(event)]
                if position[event["eventId"]] not in seqs:
                    seqs.append(position[event["eventId"]])
        for about, seqs in by_subject.items():
            assert seqs == sorted(seqs), f"{hub}: events about {about} out of order"
        # Each request was created once and finished once; each bill created once.
        kinds: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for event in received:
            kinds[(event["eventType"], *subject(event))].add(event["eventId"])
        for body in finished:
            about = ("customerBillOnDemand", body["id"])
            assert len(kinds[("CustomerBillOnDemandCreateEvent", *about)]) == 1
            assert len(kinds[("CustomerBillOnDemandStateChangeEvent", *about)]) == 1
            if body["state"] == "done":
                bill = ("customerBill", body["customerBill"]["id"])
                assert len(kinds[("CustomerBillCreateEvent", *bill)]) == 1
        # The back end's own change, noticed by the detector's new gateway, told once.
        told = kinds[("CustomerBillStateChangeEvent", "customerBill", str(changed_bill))]
        assert len(told) == 1, hub

    # The detector ran in one gateway at a time: the victim, then one survivor.
    assert len(new_holders) == 1, [i.name for i in new_holders]
    taken = new_holders[0].events("change_detection_lease_taken")
    assert taken[0]["timestamp"] > victim.events("change_detection_lease_taken")[0]["timestamp"]


def test_sigterm_hands_the_leases_over_at_once(
    store_url: str, scratch_db: Path, tmp_path: Path, listener: Listener
) -> None:
    # Leases far longer than the test: work moves on at once only if they are handed back.
    config = instance_config(tmp_path, lease=120, pause=60, detect=2)
    env = {"LEGACY_DB": str(scratch_db), "GATEWAY_STORE_URL": store_url}
    first = Instance("first", env, config, tmp_path)
    second = None
    try:
        first.wait_ready()
        eventually(lambda: first.events("change_detection_lease_taken"), "first's detector")
        response = httpx.post(
            f"{first.api}/hub", json={"callback": f"{listener.base}/slow-s"}, timeout=10
        )
        assert response.status_code == 201
        accounts = unbilled_accounts(scratch_db)[:2]
        requests = [request_bill(first, account) for account in accounts]
        owners = first.owners()

        def first_is_running_them() -> bool:
            leased = store_rows(
                store_url,
                "SELECT count(*) FROM bill_on_demand WHERE lease_owner = ANY(:o)"
                " AND state = 'inProgress'",
                o=list(owners),
            )
            return leased == [(len(requests),)]

        eventually(first_is_running_them, "first running the requests")
        prompt = instance_config(tmp_path, lease=120, pause=0, detect=2)
        second = Instance("second", env, prompt, tmp_path)
        second.wait_ready()
        # The first gateway is still holding them (a minute's pause after the back end's commit).
        assert first_is_running_them()
        signalled = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=20) == 0
        # Nothing of the first gateway's is leased any more: not a request, not an event
        # (the slow hub's), not a hub's sender, not the detector.
        assert (
            store_rows(
                store_url,
                "SELECT id FROM bill_on_demand WHERE lease_owner = ANY(:o) AND state = 'inProgress'"
                " UNION ALL SELECT event_id FROM outbox WHERE lease_owner = ANY(:o)"
                " UNION ALL SELECT name FROM lease WHERE owner = ANY(:o)",
                o=list(first.owners()),
            )
            == []
        )
        assert first.events("change_detection_lease_released")
        # The second gateway takes the work over now, not after the 120 s leases.
        eventually(lambda: second.events("change_detection_lease_taken"), "the detector moved")

        def finished() -> bool:
            states = [
                httpx.get(f"{second.api}/customerBillOnDemand/{i}", timeout=10).json()["state"]
                for i in requests
            ]
            return all(state == "done" for state in states)

        eventually(finished, "the requests finished by the second gateway", seconds=30)
        assert time.monotonic() - signalled < 30
    finally:
        first.stop()
        if second is not None:
            second.stop()
    for ident in requests:  # whatever the first had made, no request made two bills
        assert len(legacy(scratch_db, "SELECT 1 FROM INV_HDR WHERE EXT_REF = ?", ident)) == 1


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    simulator = create_rest_simulator(rest_seed())
    with ThreadedServer(simulator) as server, FaultProxy(server.port) as proxy:
        env = {
            "ENTERPRISE_URL": proxy.base,
            "GATEWAY_STORE": str(tmp_path / "store.sqlite"),
        }
        gateway = Instance("rest", env, ROOT / "config" / "rest.yaml", tmp_path)
        try:
            gateway.wait_ready()
            proxy.inject("delay", delay=1.5)  # every back-end reply 1.5 s late
            answers: list[httpx.Response] = []
            asking = threading.Thread(
                target=lambda: answers.append(
                    httpx.get(f"{gateway.api}/customerBill?limit=3&offset=1", timeout=20)
                )
            )
            asking.start()
            time.sleep(0.5)  # the request is in flight, waiting for the back end
            gateway.process.send_signal(signal.SIGTERM)
            asking.join(timeout=20)
            assert gateway.process.wait(timeout=20) == 0
        finally:
            gateway.stop()
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    assert len(answer.json()) == 3
    for bill in answer.json():
        assert_valid("CustomerBill", bill)
