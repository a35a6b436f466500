"""Prometheus metrics: what operators graph and alert on, served at `GET /metrics`.

Counted as it happens (a few dictionary lookups and one histogram observation each):

- `tmf678_http_request_duration_seconds{route,method,status}`: every request, by the
  route *template* (`/tmf-api/.../customerBill/{id}`, never the raw path, so ids add no
  series; a path no route matches is `<unmatched>`);
- `tmf678_backend_call_duration_seconds{backend,operation,outcome}`: every attempt of a
  guarded back-end read (gateway/resilience.py), refusals by the breaker or bulkhead
  included (their outcome says so, their time is ~0).

Read when scraped, by custom collectors (nothing per request): the read cache's counters
and size, each back end's breaker state and calls in flight, and from the gateway store
the outbox (depth, age of the oldest undelivered event, dead letters) and the on-demand
requests by state. The store is asked at most once per `store_ttl_seconds`, under a short
timeout, so scrapes never hammer it nor hang on it.

Several worker processes (`serve --workers N`) share counts through prometheus-client's
multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set by `serve`); the scrape-time gauges of
the cache and breakers are then those of the worker that answers, labelled with its pid.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from gateway.access import Access
from gateway.breaker import CircuitBreaker
from gateway.cache import ReadCache
from gateway.store import OperationsFigures

log = structlog.get_logger("gateway.metrics")

#: The environment variable that turns on prometheus-client's multiprocess mode.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds; API requests are mostly a few ms, a slow back end makes them seconds.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BREAKER_STATES = ("closed", "open", "half-open")

# No `_created` series beside each counter and histogram: half the scrape, never graphed.
disable_created_metrics()  # type: ignore[no-untyped-call]


class CallObserver(Protocol):
    """What a back-end guard reports each attempt to."""

    def __call__(self, operation: str, outcome: str, seconds: float) -> None: ...


class GatewayMetrics:
    """The metrics of one gateway process, and the registry `/metrics` exposes."""

    def __init__(self) -> None:
        multiprocess = os.environ.get(MULTIPROC_DIR)
        own = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "tmf678_http_request_duration_seconds",
            "Requests by route template, method and status, and how long they took.",
            ["route", "method", "status"],
            buckets=REQUEST_BUCKETS,
            registry=own,
        )
        self.backend_calls = Histogram(
            "tmf678_backend_call_duration_seconds",
            "Attempts of back-end reads by back end, operation and outcome, and their time.",
            ["backend", "operation", "outcome"],
            buckets=REQUEST_BUCKETS,
            registry=own,
        )
        if multiprocess:
            # Counts live in files every worker writes; any worker's scrape sums them.
            self.registry = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(self.registry, path=multiprocess)  # type: ignore[no-untyped-call]
            self._worker: dict[str, str] = {"pid": str(os.getpid())}
        else:
            self.registry = own
            ProcessCollector(registry=own)
            PlatformCollector(registry=own)
            self._worker = {}
        self._request_series: dict[tuple[str, str, int], Any] = {}
        self._watched: dict[str, Collector] = {}

    # Per request: keep it to lookups.

    def observe_request(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = UNMATCHED if route is None else getattr(route, "path", UNMATCHED)
        method = scope.get("method", "")
        key = (template, method, status)
        series = self._request_series.get(key)
        if series is None:
            label = method if method in _METHODS else "OTHER"
            series = self.requests.labels(template, label, str(status))
            if label != "OTHER":  # odd methods are looked up each time: no growth
                self._request_series[key] = series
        series.observe(seconds)

    def backend_observer(self, backend: str) -> CallObserver:
        """The function a back end's guard reports each attempt to."""
        series: dict[tuple[str, str], Any] = {}
        histogram = self.backend_calls

        def observe(operation: str, outcome: str, seconds: float) -> None:
            found = series.get((operation, outcome))
            if found is None:
                found = series[operation, outcome] = histogram.labels(backend, operation, outcome)
            found.observe(seconds)

        return observe

    # At scrape time.

    def watch_cache(self, cache: ReadCache) -> None:
        self._watch("cache", _CacheCollector(cache, self._worker))

    def watch_breakers(self, guards: Callable[[], Mapping[str, Any]]) -> None:
        self._watch("breakers", _BreakerCollector(guards, self._worker))

    def watch_store(self, store: StoreReader) -> None:
        self._watch("store", store)

    def _watch(self, kind: str, collector: Collector) -> None:
        """Read `collector` at each scrape, instead of the one of that kind before it.

        (Services opened again, as a test client's lifespan does, replace the old ones.)
        """
        old = self._watched.pop(kind, None)
        if old is not None:
            self.registry.unregister(old)
        self.registry.register(collector)
        self._watched[kind] = collector

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and content type (OpenMetrics when the scraper asks for it)."""
        store = self._watched.get("store")
        if isinstance(store, StoreReader):
            await store.refresh()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _CacheCollector(Collector):
    """The read cache's `stats()`: hits, misses, stale answers, bypasses, entries, bytes."""

    def __init__(self, cache: ReadCache, worker: Mapping[str, str]) -> None:
        self.cache = cache
        self.worker = worker

    def collect(self) -> Iterable[Metric]:
        stats = _cache_stats(self.cache)
        labels, values = list(self.worker), list(self.worker.values())
        counters = (
            ("hits", "Reads answered from the cache."),
            ("misses", "Reads the cache sent to the back end."),
            ("stale_served", "Stale copies served while the back end was down."),
            ("bypassed", "Reads sent to the back end because the shared cache (Redis) failed."),
        )
        for name, text in counters:
            if name in stats:
                family = CounterMetricFamily(f"tmf678_cache_{name}", text, labels=labels)
                family.add_metric(values, stats[name])
                yield family
        for name, text in (("entries", "Entries held."), ("bytes", "Bytes held (JSON sizes).")):
            if name in stats:
                gauge = GaugeMetricFamily(f"tmf678_cache_{name}", text, labels=labels)
                gauge.add_metric(values, stats[name])
                yield gauge


def _cache_stats(cache: ReadCache) -> dict[str, float]:
    return {name: float(value) for name, value in cache.stats()._asdict().items()}


class _BreakerCollector(Collector):
    """Each back end's breaker state (1 for the state it is in) and calls in flight."""

    def __init__(self, guards: Callable[[], Mapping[str, Any]], worker: Mapping[str, str]) -> None:
        self.guards = guards
        self.worker = worker

    def collect(self) -> Iterable[Metric]:
        extra, values = list(self.worker), list(self.worker.values())
        state = GaugeMetricFamily(
            "tmf678_backend_breaker_state",
            "Circuit breaker state per back end: 1 for the state it is in.",
            labels=["backend", "state", *extra],
        )
        in_flight = GaugeMetricFamily(
            "tmf678_backend_calls_in_flight",
            "Back-end calls holding a bulkhead slot now.",
            labels=["backend", *extra],
        )
        for name, guard in sorted(self.guards().items()):
            breaker: CircuitBreaker = guard.breaker
            current = breaker.state
            for option in _BREAKER_STATES:
                state.add_metric([name, option, *values], 1.0 if option == current else 0.0)
            in_flight.add_metric([name, *values], guard.bulkhead.in_use)
        yield state
        yield in_flight


class StoreReader(Collector):
    """The store's queue figures, read at most once per `ttl` seconds, within `timeout`."""

    def __init__(
        self,
        read: Callable[[], Awaitable[OperationsFigures]],
        *,
        ttl: float = 5.0,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self._figures: OperationsFigures | None = None
        self._read_at = -float("inf")
        self._ok = False
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the store again if the last figures are older than the TTL."""
        async with self._lock:  # concurrent scrapes share one read
            if self._clock() - self._read_at < self.ttl:
                return
            self._read_at = self._clock()
            try:
                async with asyncio.timeout(self.timeout):
                    self._figures = await self._read()
                self._ok = True
            except Exception as exc:  # the scrape still answers; `store_up` says 0
                log.warning("metrics_store_unread", detail=type(exc).__name__)
                self._ok = False

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "tmf678_store_metrics_up", "Whether the last read of the store's figures worked."
        )
        up.add_metric([], 1.0 if self._ok else 0.0)
        yield up
        figures = self._figures
        if figures is None or not self._ok:
            return
        yield GaugeMetricFamily(
            "tmf678_outbox_pending_events",
            "Events queued for delivery and not yet delivered (one per event and hub).",
            value=figures.outbox_pending,
        )
        oldest = figures.outbox_oldest_pending
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        yield GaugeMetricFamily(
            "tmf678_outbox_oldest_pending_age_seconds",
            "Age of the oldest undelivered event (0 when none waits).",
            value=age,
        )
        yield GaugeMetricFamily(
            "tmf678_outbox_dead_events",
            "Events given up on (dead letters), still in the store.",
            value=figures.outbox_dead,
        )
        by_state = GaugeMetricFamily(
            "tmf678_on_demand_requests",
            "Bill-on-demand requests in the store by state (inProgress is the queue).",
            labels=["state"],
        )
        for state_name, count in sorted(figures.on_demand_by_state.items()):
            by_state.add_metric([state_name], count)
        yield by_state
        yield GaugeMetricFamily(
            "tmf678_on_demand_queue_depth",
            "Bill-on-demand requests not yet finished (state inProgress).",
            value=figures.on_demand_by_state.get("inProgress", 0),
        )


def metrics_routes(metrics: GatewayMetrics, access: Access, scope: str | None) -> list[Route]:
    """`GET /metrics`, outside the API prefix; a token with `scope` when one is set."""

    async def scrape(request: Request) -> Response:
        if scope is not None:
            await access.caller(request, scope)
        body, content_type = await metrics.exposition(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    return [Route("/metrics", scrape, methods=["GET"])]
