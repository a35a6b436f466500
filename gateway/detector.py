"""Noticing changes made in a back end by others: new bills and changed states.

Legacy engines emit no events, so the gateway polls. It reads the resources whose
last-change attribute (e.g. `lastUpdate`, the legacy `UPD_TS`) is at or after its
watermark, through the same reader and push-down as the API, and compares each with
the state it last reported (`seen_state`). Events, states and the new watermark are
stored in one transaction per page, so each change is reported once, across restarts.
The first run records what exists without reporting it.

Several gateways sharing a store poll each back end once between them: a detector polls
only while it holds its back end's lease in the store (renewed as it works). A gateway
that stops releases it, so another takes over at its next poll; one killed outright
leaves it to run out (`lease_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import structlog

from adapters.base import BackendError, Plan
from gateway.calls import backend_call
from gateway.errors import ApiError
from gateway.events import EventPublisher, build_event
from gateway.pushdown import plan_read
from gateway.query import Filter, Query, SortTerm, parse_instant
from gateway.reads import ResourceReader
from gateway.resources import with_prefixed_id
from gateway.store import GatewayStore
from mappings.errors import RecordMappingError

log = structlog.get_logger("gateway.detector")

_PAGE = 500
#: The lease outlasts this many polling intervals (and at least `_MIN_LEASE_SECONDS`).
_LEASE_INTERVALS = 10
_MIN_LEASE_SECONDS = 5.0


class ChangeDetector:
    """Polls one back-end resource; its last-change attribute must be pushed down, sorted."""

    def __init__(
        self,
        *,
        collection: str,
        event_prefix: str,
        reader: ResourceReader,
        store: GatewayStore,
        publisher: EventPublisher,
        attribute: str,
        interval: float,
        id_prefix: str = "",
    ) -> None:
        self.collection = collection
        self.event_prefix = event_prefix  # "CustomerBill" -> CustomerBillCreateEvent, ...
        self.reader = reader
        self.store = store
        self.publisher = publisher
        self.attribute = attribute
        self.interval = interval
        self.id_prefix = id_prefix  # a federated route's prefix, for the ids it reports
        self.mark_name = f"detector:{collection}:{reader.backend}"
        #: The lease naming the one gateway that polls this back end (its watermark's name).
        self.lease_name = self.mark_name
        self.lease_seconds = max(interval * _LEASE_INTERVALS, _MIN_LEASE_SECONDS)
        self.owner = str(uuid.uuid4())
        self._holding = False

    async def run(self) -> None:
        """Poll while holding the lease, until cancelled; then release it."""
        try:
            while True:
                try:
                    if await self._lease():
                        async with self._renewing():
                            await self.poll_once()
                except (BackendError, ApiError) as exc:
                    log.error("change_detection_failed", resource=self.collection, detail=str(exc))
                except Exception:
                    log.exception("change_detection_failed", resource=self.collection)
                await asyncio.sleep(self.interval)
        finally:
            if self._holding:
                with contextlib.suppress(BackendError):
                    await self.store.release_leases(self.owner, [self.lease_name])
                log.info("change_detection_lease_released", lease=self.lease_name)

    async def _lease(self) -> bool:
        """Take or keep this back end's lease; whether this gateway is the one polling."""
        held = await self.store.take_lease(self.lease_name, self.owner, self.lease_seconds)
        if held != self._holding:
            event = "change_detection_lease_taken" if held else "change_detection_lease_lost"
            log.info(event, lease=self.lease_name, owner=self.owner)
        self._holding = held
        return held

    @contextlib.asynccontextmanager
    async def _renewing(self) -> AsyncIterator[None]:
        """Keep the lease while a poll runs (a first pass over a large back end is long)."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease_seconds / 3)
                with contextlib.suppress(BackendError):
                    await self._lease()

        renewer = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewer.cancel()
            await asyncio.wait([renewer])

    def _map(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """A record as the API shows it; a record its mapping cannot read is skipped."""
        try:
            item = self.reader.mapping.to_tmf(record, self.publisher.base_url)
        except RecordMappingError as exc:
            log.warning(
                "change_detection_skipped_record",
                resource=self.collection,
                backend=self.reader.backend,
                field=exc.field,
                detail=exc.reason,
            )
            return None
        return with_prefixed_id(item, self.id_prefix, self.publisher.base_url, self.collection)

    async def poll_once(self) -> int:
        """Report what changed since the watermark; the number of events queued."""
        mark = await self.store.get_watermark(self.mark_name)
        if mark is None:
            await self._baseline()
            return 0
        since = parse_instant(mark)
        assert since is not None
        newest, offset, queued = since, 0, 0
        reader = self.reader
        while True:
            query = Query(
                filters=(Filter(self.attribute, "gte", (since,), "change detection"),),
                sort=(SortTerm(self.attribute, False),),
                offset=offset,
                limit=_PAGE,
            )
            plan = plan_read(query, reader.mapping, reader.source)
            async with backend_call(reader.backend, reader.timeout):
                page = await reader.source.page(plan.backend)
            if not page.records:
                return queued
            items = [i for i in map(self._map, page.records) if i is not None]
            total = page.total
            events = []
            async with self.store.transaction() as conn:
                for item in items:
                    kind = await self.publisher.observe(
                        conn, self.collection, item["id"], item.get("state")
                    )
                    if kind is not None:
                        events.append(build_event(f"{self.event_prefix}{kind}", item))
                    stamp = parse_instant(item.get(self.attribute, ""))
                    if stamp is not None and stamp > newest:
                        newest = stamp
                queued += await self.publisher.publish(conn, events)
                await self.store.set_watermark(conn, self.mark_name, newest.isoformat())
            if events:
                log.info("changes_detected", resource=self.collection, events=len(events))
            if newest > since:
                reader.forget()  # what others changed may be in the read cache
            offset += len(page.records)
            if offset >= total:
                return queued

    async def _baseline(self) -> None:
        """Record every resource's current state once, without events."""
        source = self.reader.source
        newest: datetime | None = None
        count = 0
        async with self.store.transaction() as conn:
            async for records in source.stream(Plan(), 1000):
                rows: dict[str, str | None] = {}
                for item in map(self._map, records):
                    if item is None:
                        continue
                    rows[item["id"]] = item.get("state")
                    stamp = parse_instant(item.get(self.attribute, ""))
                    if stamp is not None and (newest is None or stamp > newest):
                        newest = stamp
                # A state the gateway recorded meanwhile (a PATCH during this first pass) is
                # newer than what this pass read: it is kept, or its change would be told twice.
                count += await self.store.record_baseline_states(conn, self.collection, rows)
            start = newest.isoformat() if newest else "1970-01-01T00:00:00+00:00"
            await self.store.set_watermark(conn, self.mark_name, start)
        log.info("change_detection_baseline", resource=self.collection, resources=count)
