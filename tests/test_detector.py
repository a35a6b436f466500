"""The change detector's first pass, against the bundled database and a real store."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path

from gateway.app import open_services
from gateway.config import DeliverySettings
from gateway.detector import ChangeDetector
from gateway.events import EventPublisher
from gateway.store import GatewayStore
from tests.conftest import gateway_config


def test_first_pass_keeps_states_recorded_meanwhile(demo_db: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "store.sqlite"

    async def scenario() -> None:
        config = gateway_config(demo_db, store=store_path, events=None, on_demand=None)
        async with AsyncExitStack() as stack:
            services = await open_services(config, stack, "http://gw")
            store = GatewayStore(f"sqlite+aiosqlite:///{store_path}")
            await store.open()
            stack.push_async_callback(store.close)
            publisher = EventPublisher(store, DeliverySettings(), "http://gw")
            # A PATCH reported bill 1 as onHold just before the first pass read it as it was.
            async with store.transaction() as conn:
                await store.record_state(conn, "customerBill", "1", "onHold")
            detector = ChangeDetector(
                collection="customerBill",
                event_prefix="CustomerBill",
                reader=services.customer_bills,
                store=store,
                publisher=publisher,
                attribute="lastUpdate",
                interval=60,
            )
            assert await detector.poll_once() == 0  # the first pass reports nothing

    asyncio.run(scenario())
    with sqlite3.connect(store_path) as conn:
        states = dict(conn.execute("SELECT key, state FROM seen_state"))
        marks = conn.execute("SELECT count(*) FROM watermark").fetchone()[0]
    assert states["1"] == "onHold"
    assert len(states) == 300 and states["2"] == "settled"
    assert marks == 1


class CountingDetector(ChangeDetector):
    """A detector that counts its polls."""

    polls = 0

    async def poll_once(self) -> int:
        self.polls += 1
        return await super().poll_once()


def test_detectors_sharing_a_store_poll_one_at_a_time_and_hand_over_on_stop(
    demo_db: Path, tmp_path: Path
) -> None:
    store_path = tmp_path / "store.sqlite"

    async def scenario() -> None:
        config = gateway_config(demo_db, store=store_path, events=None, on_demand=None)
        async with AsyncExitStack() as stack:
            services = await open_services(config, stack, "http://gw")
            store = GatewayStore(f"sqlite+aiosqlite:///{store_path}")
            await store.open()
            stack.push_async_callback(store.close)
            publisher = EventPublisher(store, DeliverySettings(), "http://gw")
            detectors = [
                CountingDetector(
                    collection="customerBill",
                    event_prefix="CustomerBill",
                    reader=services.customer_bills,
                    store=store,
                    publisher=publisher,
                    attribute="lastUpdate",
                    interval=0.05,  # a lease of 5 s: far longer than this test waits
                )
                for _ in range(3)
            ]
            tasks = [asyncio.create_task(d.run()) for d in detectors]
            await asyncio.sleep(1)
            polling = [d for d in detectors if d.polls]
            assert len(polling) == 1 and polling[0].polls > 3
            holder = polling[0]
            assert await store.lease_holder(holder.lease_name) == holder.owner
            # Stopped (shutdown): it releases the lease, and another takes over at once.
            tasks[detectors.index(holder)].cancel()
            await asyncio.wait([tasks[detectors.index(holder)]])
            before = {id(d): d.polls for d in detectors}
            await asyncio.sleep(0.5)
            others = [d for d in detectors if d is not holder and d.polls > before[id(d)]]
            assert len(others) == 1
            assert await store.lease_holder(holder.lease_name) == others[0].owner
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            assert await store.lease_holder(holder.lease_name) is None

    asyncio.run(scenario())
