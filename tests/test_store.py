"""The gateway store's methods, on a SQLite file and on the local PostgreSQL server.

Each test runs once per database. PostgreSQL is used at 127.0.0.1:5432 (user postgres,
trust authentication): a database of its own is created for the test session and dropped
after it. Where that server is not reachable the PostgreSQL runs are skipped, or fail
when CI=true (CI must not pass without them).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from time import time
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from gateway import migrations
from gateway.config import load_config
from gateway.store import ClaimedEvent, GatewayStore, OutboxEvent, metadata

POSTGRES_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
HOW_TO_ENABLE = (
    "PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres, trust authentication); "
    "start it to run the store tests on PostgreSQL too"
)

Scenario = Callable[[GatewayStore], Awaitable[None]]


async def _admin(statements: list[str], database: str = "postgres") -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE need that)."""
    engine = create_async_engine(
        f"{POSTGRES_SERVER}/{database}", isolation_level="AUTOCOMMIT", connect_args={"timeout": 5}
    )
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database for this test session; its URL."""
    name = f"gateway_store_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin([f'CREATE DATABASE "{name}"']))
    except (OSError, SQLAlchemyError, TimeoutError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{HOW_TO_ENABLE} (CI=true: required): {exc}")
        pytest.skip(f"{HOW_TO_ENABLE}: {exc}")
    yield f"{POSTGRES_SERVER}/{name}"
    asyncio.run(_admin([f'DROP DATABASE "{name}" WITH (FORCE)']))


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    reset = ["DROP SCHEMA public CASCADE", "CREATE SCHEMA public"]
    asyncio.run(_admin(reset, postgres_database.rsplit("/", 1)[1]))
    return postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store's URL: a new SQLite file, or an emptied PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def run(url: str, scenario: Scenario) -> None:
    """Open a store at `url`, run the scenario on it, close it."""

    async def main() -> None:
        store = GatewayStore(url)
        await store.open()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


async def new_request(store: GatewayStore, account: str = "ACC-1") -> str:
    async with store.transaction() as conn:
        return await store.create_on_demand(
            conn,
            backend="legacy_billing",
            account_id=account,
            account_name=None,
            name="on demand",
            description=None,
            related_party=[{"id": "p1"}],
        )


async def finish(store: GatewayStore, ident: str, owner: str, **values: Any) -> bool:
    async with store.transaction() as conn:
        return await store.finish_on_demand(conn, ident, owner, "done", **values)


async def outbox_rows(store: GatewayStore, hub_id: str) -> dict[str, tuple[Any, ...]]:
    """event_id -> (state, attempts, last_error) of a hub's outbox rows."""
    async with store.transaction() as conn:
        rows = await conn.execute(
            text("SELECT event_id, state, attempts, last_error FROM outbox WHERE hub_id = :h"),
            {"h": hub_id},
        )
        return {r[0]: tuple(r[1:]) for r in rows}


async def new_hub(store: GatewayStore, name: str) -> str:
    return await store.add_hub(f"http://127.0.0.1:9/{name}", None)


async def queue(store: GatewayStore, hub_id: str, *event_ids: str) -> None:
    events = [
        OutboxEvent(ident, hub_id, f"http://127.0.0.1:9/{hub_id}", "E", f'{{"id":"{ident}"}}')
        for ident in event_ids
    ]
    async with store.transaction() as conn:
        await store.enqueue_events(conn, events)


def ids(events: list[ClaimedEvent]) -> list[str]:
    return [e.event_id for e in events]


# Bills on demand.


def test_requests_are_claimed_oldest_first_and_finished_only_by_their_lease_holder(
    store_url: str,
) -> None:
    async def scenario(store: GatewayStore) -> None:
        first, second = await new_request(store, "ACC-1"), await new_request(store, "ACC-2")
        a = await store.claim_on_demand("A", 60)
        b = await store.claim_on_demand("B", 60)
        assert a is not None and (a.id, a.account_id, a.attempts) == (first, "ACC-1", 1)
        assert a.backend == "legacy_billing"
        assert b is not None and b.id == second
        assert await store.claim_on_demand("C", 60) is None  # both are leased
        assert not await finish(store, first, "B")  # B does not hold that lease
        assert await finish(store, first, "A", customer_bill_id="42")
        assert not await finish(store, first, "A")  # done already
        async with store.transaction() as conn:
            row = await store.on_demand_row(conn, first)
        assert (row["state"], row["customer_bill_id"], row["lease_until"]) == ("done", "42", None)
        assert row["related_party"] == '[{"id":"p1"}]'

    run(store_url, scenario)


def test_a_request_retried_later_waits_and_counts_its_attempts(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        ident = await new_request(store)
        assert (await store.claim_on_demand("A", 60)) is not None
        await store.retry_on_demand_later(ident, "B", -1)  # not B's lease: no effect
        assert await store.claim_on_demand("B", 60) is None
        await store.retry_on_demand_later(ident, "A", 60)
        assert await store.claim_on_demand("B", 60) is None  # not due for a minute
        await store.retry_on_demand_later(ident, "A", -1)  # due since a second ago
        again = await store.claim_on_demand("B", 60)
        assert again is not None and (again.id, again.attempts) == (ident, 2)

    run(store_url, scenario)


def test_a_crashed_workers_lease_runs_out(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        ident = await new_request(store)
        assert (await store.claim_on_demand("A", 0.3)) is not None
        assert await store.claim_on_demand("B", 60) is None
        await asyncio.sleep(0.4)
        taken = await store.claim_on_demand("B", 60)
        assert taken is not None and (taken.id, taken.attempts) == (ident, 2)
        assert not await finish(store, ident, "A")  # A's late outcome is refused
        assert await finish(store, ident, "B")

    run(store_url, scenario)


def test_concurrent_workers_claim_a_request_once(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        ident = await new_request(store)
        claims = await asyncio.gather(*(store.claim_on_demand(f"w{i}", 60) for i in range(6)))
        assert [c.id for c in claims if c is not None] == [ident]
        more = {await new_request(store) for _ in range(3)}
        claims = await asyncio.gather(*(store.claim_on_demand(f"v{i}", 60) for i in range(6)))
        claimed = [c.id for c in claims if c is not None]
        assert claimed and len(set(claimed)) == len(claimed) and set(claimed) <= more
        if store_url.startswith("postgresql"):  # claimers skip rows being claimed: none idle
            assert len(claimed) == 3

    run(store_url, scenario)


# Hubs and the outbox.


def test_hubs_are_listed_oldest_first_and_removed_by_id(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        first = await new_hub(store, "a")
        second = await store.add_hub("http://127.0.0.1:9/b", "eventType=X")
        async with store.transaction() as conn:
            hubs = await store.hubs(conn)
        assert [(h.id, h.callback, h.query) for h in hubs] == [
            (first, "http://127.0.0.1:9/a", None),
            (second, "http://127.0.0.1:9/b", "eventType=X"),
        ]
        assert await store.remove_hub(first)
        assert not await store.remove_hub(first)
        assert not await store.remove_hub("no-such-hub")
        async with store.transaction() as conn:
            assert [h.id for h in await store.hubs(conn)] == [second]

    run(store_url, scenario)


def test_removing_a_hub_drops_its_pending_events_but_not_delivered_ones(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        gone, kept = await new_hub(store, "a"), await new_hub(store, "b")
        await queue(store, gone, "sent", "dead", "waiting", "retrying")
        await queue(store, kept, "other")
        claimed = await store.claim_events(gone, 60, 10)
        assert ids(claimed) == ["sent", "dead", "waiting", "retrying"]
        seq = {e.event_id: e.seq for e in claimed}
        await store.settle_events(
            [seq["sent"]], [(seq["retrying"], time() + 60, "HTTP 500")], [(seq["dead"], "gone")]
        )
        await store.release_events([seq["waiting"]], time())
        assert await store.remove_hub(gone)
        assert await outbox_rows(store, gone) == {
            "sent": ("delivered", 1, None),
            "dead": ("dead", 1, "gone"),
        }
        assert await outbox_rows(store, kept) == {"other": ("pending", 0, None)}
        assert await store.hubs_with_due_events() == [kept]

    run(store_url, scenario)


def test_events_are_claimed_in_order_leased_settled_and_purged(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        a, b = await new_hub(store, "a"), await new_hub(store, "b")
        assert await store.hubs_with_due_events() == []
        await queue(store, a, "e0", "e1", "e2")
        await queue(store, b, "f0")
        assert sorted(await store.hubs_with_due_events()) == sorted([a, b])
        batch = await store.claim_events(a, 60, 2)
        assert ids(batch) == ["e0", "e1"] and [e.attempts for e in batch] == [0, 0]
        assert batch[0].url == f"http://127.0.0.1:9/{a}" and batch[0].payload == '{"id":"e0"}'
        assert isinstance(batch[0].seq, int) and batch[0].created_at <= time()
        assert await store.claim_events(a, 60, 10) == []  # in order: e2 waits behind them
        await store.release_events([e.seq for e in batch], time())  # given back, no attempt
        claimed = await store.claim_events(a, 60, 10)
        assert [(e.event_id, e.attempts) for e in claimed] == [("e0", 0), ("e1", 0), ("e2", 0)]
        e0, e1, e2 = (e.seq for e in claimed)
        await store.settle_events([e0], [(e1, time() + 60, "HTTP 503")], [(e2, "refused")])
        assert await outbox_rows(store, a) == {
            "e0": ("delivered", 1, None),
            "e1": ("pending", 1, "HTTP 503"),
            "e2": ("dead", 1, "refused"),
        }
        assert await store.claim_events(a, 60, 10) == []  # e1 waits for its retry
        assert await store.hubs_with_due_events() == [b]
        await store.release_events([e1], time() - 1)
        assert [(e.event_id, e.attempts) for e in await store.claim_events(a, 60, 10)] == [
            ("e1", 1)
        ]
        assert await store.purge_delivered(time() - 3600) == 0  # none that old
        assert await store.purge_delivered(time() + 1) == 1
        assert set(await outbox_rows(store, a)) == {"e1", "e2"}

    run(store_url, scenario)


def test_an_unsettled_claim_of_events_runs_out(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        hub_id = await new_hub(store, "a")
        await queue(store, hub_id, "e0")
        assert ids(await store.claim_events(hub_id, 0.3, 10)) == ["e0"]
        assert await store.claim_events(hub_id, 60, 10) == []
        await asyncio.sleep(0.4)
        assert ids(await store.claim_events(hub_id, 60, 10)) == ["e0"]

    run(store_url, scenario)


def test_concurrent_workers_claim_each_event_once(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        hub_id = await new_hub(store, "a")
        await queue(store, hub_id, *(f"e{i}" for i in range(20)))
        batches = await asyncio.gather(*(store.claim_events(hub_id, 60, 5) for _ in range(6)))
        claimed = [event_id for batch in batches for event_id in ids(batch)]
        assert "e0" in claimed and len(claimed) == len(set(claimed))  # none twice
        assert max(len(batch) for batch in batches) <= 5  # never more than the limit
        # (Workers take turns on a hub by its lease; claims alone never give an event twice.)

    run(store_url, scenario)


# Recorded states and watermarks.


def test_record_state_tells_first_sightings_from_state_changes(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        async def record(key: str, state: str | None, existed: bool = False) -> str | None:
            async with store.transaction() as conn:
                return await store.record_state(conn, "customerBill", key, state, existed=existed)

        assert await record("1", "new") == "CreateEvent"
        assert await record("1", "new") is None  # already reported
        assert await record("1", "sent") == "StateChangeEvent"
        assert await record("1", "sent") is None
        assert await record("2", "onHold", existed=True) == "StateChangeEvent"  # e.g. a PATCH
        assert await record("3", None) == "CreateEvent"
        assert await record("3", None) is None  # no state, still no change
        assert await record("3", "new") == "StateChangeEvent"
        assert await record("3", None) == "StateChangeEvent"
        async with store.transaction() as conn:  # resources are apart: same key, other type
            kind = await store.record_state(conn, "customerBillOnDemand", "1", "done")
        assert kind == "CreateEvent"

    run(store_url, scenario)


def test_a_first_sighting_recorded_by_two_transactions_is_created_once(store_url: str) -> None:
    async def record_later(store: GatewayStore, key: str, state: str) -> str | None:
        async with store.transaction() as conn:
            return await store.record_state(conn, "customerBill", key, state)

    async def scenario(store: GatewayStore) -> None:
        # The detector and a PATCH see a new bill at once: one creation, then a change if
        # the second saw another state.
        for key, later_state, later_kind in (("8", "new", None), ("9", "sent", "StateChangeEvent")):
            async with store.transaction() as conn:
                assert await store.record_state(conn, "customerBill", key, "new") == "CreateEvent"
                later = asyncio.create_task(record_later(store, key, later_state))
                await asyncio.sleep(0.3)
                assert not later.done()  # it waits for this transaction
            assert await later == later_kind

    run(store_url, scenario)


def test_baseline_states_keep_states_recorded_meanwhile(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        async with store.transaction() as conn:
            await store.record_state(conn, "customerBill", "1", "onHold")
        states: dict[str, str | None] = {str(i): "settled" for i in range(1, 2501)}
        states["2"] = None
        async with store.transaction() as conn:
            assert await store.record_baseline_states(conn, "customerBill", states) == 2499
            assert await store.record_baseline_states(conn, "customerBill", states) == 0
        async with store.transaction() as conn:
            assert await store.record_state(conn, "customerBill", "1", "onHold") is None
            assert await store.record_state(conn, "customerBill", "2", None) is None
            assert await store.record_state(conn, "customerBill", "2500", "settled") is None
            assert await store.record_state(conn, "customerBill", "7", "paid") == (
                "StateChangeEvent"
            )

    run(store_url, scenario)


def test_watermarks_move_inside_the_callers_transaction(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        assert await store.get_watermark("detector:customerBill") is None
        async with store.transaction() as conn:
            await store.set_watermark(conn, "detector:customerBill", "2024-01-01T00:00:00+00:00")
        async with store.transaction() as conn:
            await store.set_watermark(conn, "detector:customerBill", "2024-02-01T00:00:00+00:00")
            await store.set_watermark(conn, "detector:other", "1970-01-01T00:00:00+00:00")
        with pytest.raises(RuntimeError):
            async with store.transaction() as conn:
                await store.set_watermark(conn, "detector:customerBill", "2099-01-01")
                raise RuntimeError("the page's events could not be queued")
        assert await store.get_watermark("detector:customerBill") == "2024-02-01T00:00:00+00:00"
        assert await store.get_watermark("detector:other") == "1970-01-01T00:00:00+00:00"

    run(store_url, scenario)


# Leases on exclusive jobs, and handing claims back.


def test_a_lease_is_held_by_one_owner_until_it_runs_out_or_is_released(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        assert await store.take_lease("detector:x", "a", 60)
        assert not await store.take_lease("detector:x", "b", 60)
        assert await store.take_lease("detector:x", "a", 60)  # renewed by its holder
        assert await store.lease_holder("detector:x") == "a"
        assert await store.release_leases("b") == 0  # not b's to release
        assert await store.release_leases("a", ["detector:x"]) == 1
        assert await store.lease_holder("detector:x") is None
        assert await store.take_lease("detector:x", "b", 0.2)
        await asyncio.sleep(0.3)  # b is killed: its lease runs out
        assert await store.lease_holder("detector:x") is None
        assert await store.take_lease("detector:x", "a", 60)
        assert await store.lease_holder("detector:x") == "a"

    run(store_url, scenario)


def test_concurrent_owners_take_a_lease_once(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        for round_ in range(5):
            name = f"hub:{round_}"
            taken = await asyncio.gather(*(store.take_lease(name, f"o{i}", 60) for i in range(8)))
            assert taken.count(True) == 1
            assert await store.lease_holder(name) == f"o{taken.index(True)}"

    run(store_url, scenario)


def test_a_stopping_worker_hands_back_its_requests_and_events_at_once(store_url: str) -> None:
    async def scenario(store: GatewayStore) -> None:
        first, second = await new_request(store), await new_request(store)
        claimed = await store.claim_on_demand_requests("a", 60, 1, backend="legacy_billing")
        assert [r.id for r in claimed] == [first]
        assert await finish(store, first, "a")  # finished: not handed back
        claimed = await store.claim_on_demand_requests("a", 60, 1, backend="legacy_billing")
        assert [r.id for r in claimed] == [second]
        assert await store.release_on_demand_claims("b", [second]) == 0
        assert await store.release_on_demand_claims("a", [first, second]) == 1
        again = await store.claim_on_demand_requests("b", 60, 5, backend="legacy_billing")
        assert [r.id for r in again] == [second]
        assert not await finish(store, second, "a")  # a's claim is gone

        hub_id = await new_hub(store, "h")
        await queue(store, hub_id, "e1", "e2", "e3")
        assert ids(await store.claim_events(hub_id, 60, 2, "a")) == ["e1", "e2"]
        assert await store.claim_events(hub_id, 60, 5, "b") == []  # behind a's claims
        assert await store.release_event_claims("b") == 0
        assert await store.release_event_claims("a") == 2
        assert ids(await store.claim_events(hub_id, 60, 5, "b")) == ["e1", "e2", "e3"]

    run(store_url, scenario)


# The schema: Alembic revisions (gateway/migrations), under a lock.


async def schema_differences(store: GatewayStore) -> list[Any]:
    """What the migrated database lacks or has besides the store's tables (none: same).

    The numbered migrations' `store_schema_version` stays in a store they made (unused,
    so gateways of the version before can still start on it during an upgrade).
    """
    async with store.adapter.engine.connect() as conn:
        differences = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    return [
        d for d in differences if d[:1] != ("remove_table",) or d[1].name != "store_schema_version"
    ]


async def revisions(store: GatewayStore) -> list[str]:
    async with store.transaction() as conn:
        return list((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())


def test_gateways_starting_together_migrate_the_store_once(store_url: str) -> None:
    async def main() -> None:
        stores = [GatewayStore(store_url) for _ in range(3)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            assert await revisions(stores[0]) == [migrations.head()]
            assert await schema_differences(stores[0]) == []
        finally:
            for store in stores:
                await store.close()

    asyncio.run(main())


#: A store as the numbered in-code migrations 1 and 2 made it (before Alembic), with rows.
OLD_STORE = {
    "sqlite": [
        "CREATE TABLE store_schema_version (version INTEGER NOT NULL, applied_at VARCHAR(20)"
        " NOT NULL, PRIMARY KEY (version))",
        "CREATE TABLE bill_on_demand (seq INTEGER NOT NULL, id VARCHAR(36) NOT NULL, state"
        " VARCHAR(20) NOT NULL, billing_account_id VARCHAR(64) NOT NULL, billing_account_name"
        " VARCHAR(200), name VARCHAR(200), description TEXT, related_party TEXT,"
        " customer_bill_id VARCHAR(64), created_at VARCHAR(20) NOT NULL, updated_at VARCHAR(20)"
        " NOT NULL, attempts INTEGER NOT NULL, lease_owner VARCHAR(36), lease_until FLOAT,"
        " PRIMARY KEY (seq), UNIQUE (id))",
        "CREATE INDEX ix_bill_on_demand_state ON bill_on_demand (state)",
        "CREATE INDEX ix_bill_on_demand_billing_account_id ON bill_on_demand (billing_account_id)",
        "CREATE INDEX ix_bill_on_demand_lease_until ON bill_on_demand (lease_until)",
        "CREATE TABLE hub (seq INTEGER NOT NULL, id VARCHAR(36) NOT NULL, callback TEXT NOT"
        " NULL, query TEXT, created_at VARCHAR(20) NOT NULL, PRIMARY KEY (seq), UNIQUE (id))",
        "CREATE TABLE outbox (seq INTEGER NOT NULL, event_id VARCHAR(36) NOT NULL, hub_id"
        " VARCHAR(36) NOT NULL, url TEXT NOT NULL, event_type VARCHAR(60) NOT NULL, payload TEXT"
        " NOT NULL, state VARCHAR(12) NOT NULL, attempts INTEGER NOT NULL, due_at FLOAT NOT"
        " NULL, created_at FLOAT NOT NULL, last_error TEXT, PRIMARY KEY (seq))",
        "CREATE INDEX ix_outbox_hub_id ON outbox (hub_id)",
        "CREATE INDEX ix_outbox_due ON outbox (state, due_at)",
        "CREATE TABLE seen_state (resource VARCHAR(40) NOT NULL, key VARCHAR(64) NOT NULL,"
        " state VARCHAR(40), PRIMARY KEY (resource, key))",
        "CREATE TABLE watermark (name VARCHAR(60) NOT NULL, value TEXT NOT NULL,"
        " PRIMARY KEY (name))",
    ],
    "postgresql": [
        "CREATE TABLE store_schema_version (version INTEGER NOT NULL, applied_at VARCHAR(20)"
        " NOT NULL, PRIMARY KEY (version))",
        "CREATE TABLE bill_on_demand (seq SERIAL NOT NULL, id VARCHAR(36) NOT NULL, state"
        " VARCHAR(20) NOT NULL, billing_account_id VARCHAR(64) NOT NULL, billing_account_name"
        " VARCHAR(200), name VARCHAR(200), description TEXT, related_party TEXT,"
        " customer_bill_id VARCHAR(64), created_at VARCHAR(20) NOT NULL, updated_at VARCHAR(20)"
        " NOT NULL, attempts INTEGER NOT NULL, lease_owner VARCHAR(36), lease_until FLOAT,"
        " PRIMARY KEY (seq), UNIQUE (id))",
        "CREATE INDEX ix_bill_on_demand_state ON bill_on_demand (state)",
        "CREATE INDEX ix_bill_on_demand_billing_account_id ON bill_on_demand (billing_account_id)",
        "CREATE INDEX ix_bill_on_demand_lease_until ON bill_on_demand (lease_until)",
        "CREATE TABLE hub (seq SERIAL NOT NULL, id VARCHAR(36) NOT NULL, callback TEXT NOT"
        " NULL, query TEXT, created_at VARCHAR(20) NOT NULL, PRIMARY KEY (seq), UNIQUE (id))",
        # Before migration 4, a 32-bit serial key.
        "CREATE TABLE outbox (seq SERIAL NOT NULL, event_id VARCHAR(36) NOT NULL, hub_id"
        " VARCHAR(36) NOT NULL, url TEXT NOT NULL, event_type VARCHAR(60) NOT NULL, payload TEXT"
        " NOT NULL, state VARCHAR(12) NOT NULL, attempts INTEGER NOT NULL, due_at FLOAT NOT"
        " NULL, created_at FLOAT NOT NULL, last_error TEXT, PRIMARY KEY (seq))",
        "CREATE INDEX ix_outbox_hub_id ON outbox (hub_id)",
        "CREATE INDEX ix_outbox_due ON outbox (state, due_at)",
        "CREATE TABLE seen_state (resource VARCHAR(40) NOT NULL, key VARCHAR(64) NOT NULL,"
        " state VARCHAR(40), PRIMARY KEY (resource, key))",
        "CREATE TABLE watermark (name VARCHAR(60) NOT NULL, value TEXT NOT NULL,"
        " PRIMARY KEY (name))",
    ],
}
OLD_ROWS = [
    "INSERT INTO store_schema_version VALUES (1, '2026-01-01T00:00:00Z'),"
    " (2, '2026-01-01T00:00:00Z')",
    "INSERT INTO bill_on_demand (id, state, billing_account_id, created_at, updated_at,"
    " attempts) VALUES ('old-request', 'inProgress', 'ACC-OLD', '2026-01-01T00:00:00Z',"
    " '2026-01-01T00:00:00Z', 0)",
    "INSERT INTO hub (id, callback, created_at) VALUES ('old-hub', 'http://127.0.0.1:9/old',"
    " '2026-01-01T00:00:00Z')",
    "INSERT INTO outbox (event_id, hub_id, url, event_type, payload, state, attempts, due_at,"
    " created_at) VALUES ('old-event', 'old-hub', 'http://127.0.0.1:9/old', 'E', '{}',"
    " 'pending', 0, 0, 0)",
    "INSERT INTO watermark VALUES ('detector:customerBill:legacy_billing',"
    " '2026-01-01T00:00:00+00:00')",
]


def test_a_store_made_by_the_numbered_migrations_is_adopted_with_its_rows(store_url: str) -> None:
    async def build_old_store() -> None:
        engine = create_async_engine(store_url)
        try:
            async with engine.begin() as conn:
                for statement in OLD_STORE[engine.dialect.name] + OLD_ROWS:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    async def adopted(store: GatewayStore) -> None:
        assert await revisions(store) == [migrations.head()]
        assert await schema_differences(store) == []
        claimed = await store.claim_on_demand_requests(
            "w", 60, 5, backend="legacy_billing", strays_besides=["legacy_billing"]
        )
        assert [(r.id, r.account_id, r.backend) for r in claimed] == [
            ("old-request", "ACC-OLD", None)
        ]
        async with store.transaction() as conn:
            assert [h.id for h in await store.hubs(conn)] == ["old-hub"]
        old_events = await store.claim_events("old-hub", 60, 5, "w")
        assert ids(old_events) == ["old-event"]
        await store.settle_events([old_events[0].seq], [], [])
        assert await store.get_watermark("detector:customerBill:legacy_billing") is not None
        if store.adapter.engine.dialect.name == "postgresql":  # migration 4's 64-bit key
            async with store.transaction() as conn:
                await conn.execute(text("SELECT setval('outbox_seq_seq', 3000000000)"))
            await queue(store, "old-hub", "e-big")
            assert [e.seq for e in await store.claim_events("old-hub", 60, 5)] == [3000000001]

    async def left_as_it_is(store: GatewayStore) -> None:
        assert await revisions(store) == [migrations.head()]
        assert await schema_differences(store) == []
        assert await store.lease_holder("none") is None

    asyncio.run(build_old_store())
    run(store_url, adopted)
    run(store_url, left_as_it_is)  # a current store is left as it is


def test_five_processes_migrating_one_fresh_postgresql_database_make_one_schema(
    postgres_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "store-only.yaml"
    config.write_text("store: {url: '${GATEWAY_STORE_URL}'}\n")
    env = {**os.environ, "GATEWAY_STORE_URL": postgres_url}
    command = [sys.executable, "-m", "gateway", "migrate", "--config", str(config)]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(5)
    ]
    outputs = [p.communicate(timeout=60)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0] * 5, outputs
    assert all(f"at revision {migrations.head()}" in out for out in outputs), outputs

    async def one_schema(store: GatewayStore) -> None:
        assert await revisions(store) == [migrations.head()]
        assert await schema_differences(store) == []

    async def check() -> None:
        store = GatewayStore(postgres_url)
        await store.open(migrate=False)
        try:
            await one_schema(store)
        finally:
            await store.close()

    asyncio.run(check())


def test_migrate_reports_an_unreachable_store_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "store-only.yaml"
    config.write_text("store: {url: 'postgresql+asyncpg://nobody@127.0.0.1:9/none'}\n")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert done.stderr.startswith("tmf678-gateway migrate: cannot connect to back end")
    assert "gateway_store" in done.stderr and done.stderr.count("\n") == 1


# Choosing the store.


@pytest.mark.parametrize("name", ["default", "federated", "rest", "secure", "soap"])
def test_the_bundled_configurations_take_the_store_from_the_environment(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(__file__).resolve().parent.parent / "config" / f"{name}.yaml"
    monkeypatch.delenv("GATEWAY_STORE_URL", raising=False)
    monkeypatch.delenv("GATEWAY_STORE", raising=False)
    monkeypatch.setenv("AUTH_JWKS_FILE", "var/dev-jwks.json")  # secure.yaml needs auth
    monkeypatch.setenv("AUTH_ISSUER", "http://127.0.0.1/issuer")
    default = load_config(path).store.url
    assert default.startswith("sqlite+aiosqlite:///var/gateway_store") and "${" not in default
    monkeypatch.setenv("GATEWAY_STORE", "/srv/store.sqlite")  # another file, as before
    assert load_config(path).store.url == "sqlite+aiosqlite:////srv/store.sqlite"
    monkeypatch.setenv("GATEWAY_STORE_URL", "postgresql+asyncpg://gw@db/gateway")
    assert load_config(path).store.url == "postgresql+asyncpg://gw@db/gateway"
