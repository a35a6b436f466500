"""The gateway store's methods, on a SQLite file and on the local PostgreSQL server.

Each test runs once per database. PostgreSQL is used at 127.0.0.1:5432 (user postgres,
trust authentication): a database of its own is created for the test session and dropped
after it. Where that server is not reachable the PostgreSQL runs are skipped, or fail
when CI=true (CI must not pass without them).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from time import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.store import MIGRATIONS, ClaimedEvent, GatewayStore, OutboxEvent

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
        rest = await store.claim_events(a, 60, 10)
        assert ids(rest) == ["e2"]  # the others are leased
        assert await store.claim_events(a, 60, 10) == []
        await store.release_events([rest[0].seq], time())  # given back, not an attempt
        assert [(e.event_id, e.attempts) for e in await store.claim_events(a, 60, 10)] == [
            ("e2", 0)
        ]
        e0, e1, e2 = batch[0].seq, batch[1].seq, rest[0].seq
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
        assert sorted(claimed) == sorted(f"e{i}" for i in range(20))
        assert max(len(batch) for batch in batches) <= 5  # never more than the limit

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


# The schema.


def test_gateways_starting_together_migrate_the_store_once(store_url: str) -> None:
    async def main() -> None:
        stores = [GatewayStore(store_url) for _ in range(3)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            async with stores[0].transaction() as conn:
                versions = await conn.execute(text("SELECT version FROM store_schema_version"))
                assert sorted(versions.scalars()) == list(range(1, len(MIGRATIONS) + 1))
        finally:
            for store in stores:
                await store.close()

    asyncio.run(main())


def test_outbox_keys_outgrow_32_bits_on_postgresql_also_after_an_upgrade(postgres_url: str) -> None:
    async def as_before_migration_4(store: GatewayStore) -> None:
        async with store.transaction() as conn:
            await conn.execute(text("ALTER TABLE outbox ALTER COLUMN seq TYPE INTEGER"))
            await conn.execute(text("ALTER SEQUENCE outbox_seq_seq AS INTEGER"))
            await conn.execute(text("DELETE FROM store_schema_version WHERE version = 4"))
            with pytest.raises(SQLAlchemyError, match="out of bounds"):
                async with conn.begin_nested():
                    await conn.execute(text("SELECT setval('outbox_seq_seq', 3000000000)"))

    async def migrated(store: GatewayStore) -> None:
        hub_id = await new_hub(store, "a")
        async with store.transaction() as conn:
            await conn.execute(text("SELECT setval('outbox_seq_seq', 3000000000)"))
        await queue(store, hub_id, "e0")
        assert [e.seq for e in await store.claim_events(hub_id, 60, 10)] == [3000000001]

    run(postgres_url, as_before_migration_4)
    run(postgres_url, migrated)
