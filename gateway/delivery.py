"""Delivery of queued events to subscribers: at least once, each hub on its own.

Each hub with due events gets its own task, which sends that hub's events in order,
each with a timeout; a slow or dead subscriber therefore only ever delays itself. Failures
are retried with exponential backoff and jitter; after `max_attempts` or `max_age_seconds`
an event is dead-lettered (kept with its last error). Claims are leases in the store, so
events a killed gateway was sending are sent again after the lease: receivers
de-duplicate by `eventId`. Several gateways share one store: a hub's events are sent by
one of them at a time (the hub's lease in the store), which keeps them in order; a gateway
that stops hands its claims and hub leases back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from functools import partial
from time import monotonic, time

import httpx
import structlog

from adapters.base import BackendError
from gateway.backoff import backoff_seconds
from gateway.callbacks import CallbackPolicy, CallbackRefused
from gateway.config import DeliverySettings
from gateway.pinned_transport import CallbackClient
from gateway.store import ClaimedEvent, GatewayStore

log = structlog.get_logger("gateway.delivery")

# Events claimed at once per subscriber, then sent one after the other, oldest first.
_BATCH = 50


class DeliveryWorker:
    def __init__(
        self, store: GatewayStore, settings: DeliverySettings, policy: CallbackPolicy
    ) -> None:
        self.store = store
        self.settings = settings
        self.policy = policy
        self.owner = str(uuid.uuid4())
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._claimed = False  # whether it ever claimed work (so has any to hand back)
        # Every delivery resolves and checks its callback once and connects to that address.
        self._client = CallbackClient(
            policy,
            timeout=settings.timeout_seconds,
            limits=httpx.Limits(max_connections=settings.concurrency * 2),
        )

    def _forget(self, hub_id: str, _: object) -> None:
        self._running.pop(hub_id, None)

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        """Stop sending, and hand back this worker's claims and hub leases at once."""
        running = list(self._running.values())
        for task in running:
            task.cancel()
        if running:  # bounded, as every step of shutdown
            _, stuck = await asyncio.wait(running, timeout=self.settings.timeout_seconds + 1)
            if stuck:
                log.error("delivery_senders_not_stopped", senders=len(stuck))
        if self._claimed:
            await self._hand_back()
        await self._client.aclose()

    async def _hand_back(self) -> None:
        try:
            events = await self.store.release_event_claims(self.owner)
            hubs = await self.store.release_leases(self.owner)
        except BackendError as exc:  # they run out instead
            log.warning("delivery_claims_not_released", detail=exc.reason)
        else:
            if events or hubs:
                log.info("delivery_claims_released", events=events, hubs=hubs)

    async def run(self) -> None:
        """Start a sender for each hub with due events; forever, until cancelled."""
        last_purge = 0.0
        log.info("delivery_worker_started", owner=self.owner)  # whose leases are whose
        while True:
            try:
                for hub_id in await self.store.hubs_with_due_events():
                    if hub_id not in self._running:
                        task = asyncio.create_task(self._send_hub(hub_id))
                        self._running[hub_id] = task
                        task.add_done_callback(partial(self._forget, hub_id))
                if time() - last_purge > 3600:
                    await self.store.purge_delivered(time() - 86400)
                    last_purge = time()
            except BackendError as exc:
                log.error("delivery_store_unavailable", detail=exc.reason)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

    async def _send_hub(self, hub_id: str) -> None:
        try:
            await self._send_due(hub_id)
        except Exception:  # never lose the sender silently; the lease brings the events back
            log.exception("delivery_failed", hub=hub_id)

    async def _send_due(self, hub_id: str) -> None:
        timeout = self.settings.timeout_seconds
        # Sending stops after two timeouts' worth of work and the lease allows three, so
        # events a killed gateway had claimed are due again within 3 x timeout + 1 s.
        lease = timeout * 3 + 1
        hub_lease = f"hub:{hub_id}"
        async with self._slots:
            self._claimed = True
            # One sender per hub across gateways keeps its events in order.
            try:
                held_until = await self._take_hub_lease(hub_lease, lease)
            except BackendError as exc:
                log.error("delivery_store_unavailable", detail=exc.reason)
                return
            if held_until is None:
                return  # another gateway is sending this hub's events
            try:
                await self._send_batches(hub_id, hub_lease, lease, held_until)
            finally:
                with contextlib.suppress(BackendError):
                    await self.store.release_leases(self.owner, [hub_lease])

    async def _take_hub_lease(self, hub_lease: str, lease: float) -> float | None:
        """Take or renew the hub's lease: until when (monotonic) it is surely ours, or None."""
        asked_at = monotonic()  # the store counts from a little later: this end is safe
        if not await self.store.take_lease(hub_lease, self.owner, lease):
            return None
        return asked_at + lease

    async def _send_batches(
        self, hub_id: str, hub_lease: str, lease: float, held_until: float
    ) -> None:
        """Claim and send the hub's due events, batch after batch, holding its lease.

        The lease is renewed only when what is left of it might not cover another batch
        (not for each batch), and a batch's outcomes are settled in the same transaction
        that claims the next one: one store transaction per batch.
        """
        timeout = self.settings.timeout_seconds
        delivered: list[int] = []  # sent, settled with the next claim
        dead: list[tuple[int, str]] = []
        while True:
            try:
                if held_until - monotonic() < timeout * 2 + 1:
                    if delivered or dead:  # settled whether or not the lease is still ours
                        await self.store.settle_events(delivered, [], dead)
                        delivered, dead = [], []
                    renewed = await self._take_hub_lease(hub_lease, lease)
                    if renewed is None:
                        log.warning("delivery_lease_lost", hub=hub_id)
                        return
                    held_until = renewed
                events = await self.store.settle_and_claim(
                    hub_id, delivered, dead, lease, _BATCH, self.owner
                )
            except BackendError as exc:
                log.error("delivery_store_unavailable", detail=exc.reason)
                return
            delivered, dead = [], []
            if not events:
                return
            # No post starts unless the hub's lease lasts until its timeout.
            stop_at = min(monotonic() + timeout * 2, held_until - timeout - 0.5)
            retry: list[tuple[int, float, str]] = []
            unsent: list[int] = []
            for index, event in enumerate(events):
                if monotonic() > stop_at:
                    unsent = [e.seq for e in events[index:]]
                    break
                outcome = await self._post(event)
                if outcome is None:
                    delivered.append(event.seq)
                    continue
                error, final = outcome
                attempts = event.attempts + 1
                too_old = time() - event.created_at > self.settings.max_age_seconds
                if final or too_old or attempts >= self.settings.max_attempts:
                    dead.append((event.seq, error))
                    log.warning(
                        "event_dead_lettered",
                        hub=hub_id,
                        event_id=event.event_id,
                        attempts=attempts,
                        error=error,
                    )
                    continue
                delay = backoff_seconds(
                    attempts, self.settings.retry_base_seconds, self.settings.retry_max_seconds
                )
                retry.append((event.seq, time() + delay, error))
                # A failing subscriber: the rest wait with it (not counted as attempts).
                unsent = [e.seq for e in events[index + 1 :]]
                break
            if not (retry or unsent):
                continue  # settled with the next claim
            try:
                await self.store.settle_events(delivered, retry, dead)
                delivered, dead = [], []
                if unsent:
                    due = retry[0][1] if retry else time()
                    await self.store.release_events(unsent, due)
            except BackendError as exc:
                log.error("delivery_store_unavailable", detail=exc.reason)
                return
            if retry:
                return  # back off; the slot goes to other subscribers

    async def _post(self, event: ClaimedEvent) -> tuple[str, bool] | None:
        """None when delivered; else (error, final) where final means never retry."""
        try:
            response = await self._client.post(
                event.url,
                content=event.payload.encode(),
                headers={"Content-Type": "application/json", "X-Event-Id": event.event_id},
            )
        except CallbackRefused as exc:
            return exc.reason, True
        except httpx.TimeoutException:
            return f"no answer within {self.settings.timeout_seconds:g} s", False
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}", False
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}", False
