"""One incoming API request as the back-end layer sees it: its deadline and what served it.

The middleware here bounds the requests in flight in the gateway (503 at once beyond),
gives each request one end-to-end deadline that all its back-end calls share (a PATCH
making three calls cannot take three timeouts), and keeps what the read layer recorded
for the read routes to mark their answers with (gateway/routes.py `read_response`):
`Age` and `X-Cache` when the cache served it (`stale` when a back end was down),
`X-Partial-Result` when a federated list left a back end out. (The routes add them
rather than a wrapper of `send` here: a cache hit pays for every layer it goes through.)

Code outside a request (change detection, the on-demand worker) has no scope: no
deadline beyond each call's own timeout, and no cached reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ApiError, error_response
from gateway.memory import BURST_REQUESTS, BurstRecovery
from gateway.resources import API_PREFIX

if TYPE_CHECKING:
    from gateway.cache import Entry

#: Methods whose reads may be answered from the cache (a PATCH reads the back end).
CACHEABLE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(slots=True)
class RequestScope:
    method: str
    #: `time.monotonic()` by which every back-end call of the request must be over.
    deadline: float | None = None
    #: `hit`, `miss` or `stale`, once a read consulted the cache.
    cache: str | None = None
    #: Seconds since the oldest cached part of the answer was read from its back end.
    age: float | None = None
    #: The shortest freshness lifetime (TTL) of the cached parts of the answer.
    ttl: float | None = None
    #: The cache entry (gateway/cache.py `Entry`) the last cached read answered from.
    entry: Entry | None = None
    #: Back ends a federated list left out (`federation: partial`).
    left_out: list[str] = field(default_factory=list)

    @property
    def cacheable(self) -> bool:
        return self.method in CACHEABLE_METHODS

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def served(
        self,
        outcome: str,
        age: float | None = None,
        ttl: float | None = None,
        entry: Entry | None = None,
    ) -> None:
        """Record how a read was served; the stalest, oldest, shortest-lived part wins."""
        order = ("miss", "hit", "stale")
        if self.cache is None or order.index(outcome) > order.index(self.cache):
            self.cache = outcome
        if age is not None:
            self.age = age if self.age is None else max(self.age, age)
        if ttl is not None:
            self.ttl = ttl if self.ttl is None else min(self.ttl, ttl)
        self.entry = entry

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`X-Cache`, `Age` (whole seconds) and `X-Partial-Result`, as recorded."""
        out = []
        cache = self.cache
        if cache is not None:
            out.append((b"x-cache", cache.encode()))
            if self.age is not None and cache != "miss":
                out.append((b"age", b"%d" % self.age))  # (truncated: it is never negative)
        if self.left_out:
            out.append((b"x-partial-result", f"left out {', '.join(self.left_out)}".encode()))
        return out


_RANK = {"miss": 0, "hit": 1, "stale": 2}
_current: ContextVar[RequestScope | None] = ContextVar("gateway_request", default=None)


def current_request() -> RequestScope | None:
    """The API request being served (None in background work)."""
    return _current.get()


def remaining_seconds() -> float | None:
    scope = _current.get()
    return None if scope is None else scope.remaining()


@contextmanager
def request_scope(
    method: str = "GET", deadline_seconds: float | None = None
) -> Iterator[RequestScope]:
    """Run the code inside as (part of) one request: the middleware's way, and the tests'."""
    deadline = None if deadline_seconds is None else time.monotonic() + deadline_seconds
    scope = RequestScope(method, deadline)
    token = _current.set(scope)
    try:
        yield scope
    finally:
        _current.reset(token)


class RequestScopeMiddleware:
    """Pure ASGI: the in-flight bound and the deadline; the scope the read layer reports to."""

    def __init__(
        self,
        app: ASGIApp,
        deadline_seconds: float,
        max_in_flight: int,
        retry_after_seconds: int = 1,
    ) -> None:
        self.app = app
        self.deadline_seconds = deadline_seconds
        self.max_in_flight = max_in_flight
        self.retry_after = str(retry_after_seconds)
        self.in_flight = 0
        #: The most requests in flight at once since the gateway was last idle.
        self.peak = 0
        self.recovery = BurstRecovery(min(BURST_REQUESTS, max_in_flight))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            busy = ApiError(
                503,
                "Gateway busy",
                f"The gateway is serving {self.max_in_flight} requests; try again shortly",
                code="GATEWAY_BUSY",
                headers={"Retry-After": self.retry_after},
            )
            await error_response(busy)(scope, receive, send)
            return
        self.in_flight += 1
        if self.in_flight > self.peak:
            self.peak = self.in_flight
        state = RequestScope(scope["method"], time.monotonic() + self.deadline_seconds)
        token = _current.set(state)
        try:
            await self.app(scope, receive, send)  # the read routes add `state.headers()`
        finally:
            _current.reset(token)
            self.in_flight -= 1
            if not self.in_flight:
                self.recovery.idle(self.peak)
                self.peak = 0
