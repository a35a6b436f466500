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
