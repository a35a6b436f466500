"""Reading one TMF resource type from its back end: plan, call, map, finish.

When every term is pushed down, the back end returns the page and the total. When
some are not, the gateway streams the back end's matches in bounded batches, maps
them, applies the residual terms, counts every match (so `X-Total-Count` stays exact)
and keeps only the requested window (a bounded heap when it must sort itself).

A reader given a `BackendGuard` reads through it (retries, breaker, bulkhead, deadline:
gateway/resilience.py), and given a `ReadCache` answers GETs from it (gateway/cache.py);
without them, each read is one `backend_call`.
"""

from __future__ import annotations

import builtins
import heapq
import re
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from adapters.base import Source
from gateway import tolerance
from gateway.cache import MISSING, ReadCache, query_key
from gateway.calls import BackendDown, backend_call
from gateway.errors import ApiError
from gateway.oas import AttributeTypes
from gateway.pushdown import ReadPlan, plan_read, reverse_filter
from gateway.query import Filter, Query
from gateway.reply_checks import checked_page, checked_stream
from gateway.request_scope import current_request
from gateway.residual import compile_filters, sort_key
from gateway.resilience import BackendGuard
from gateway.scan_budget import check_before_scan, too_broad
from mappings.compiler import CompiledMapping

Resource = dict[str, Any]
T = TypeVar("T")


class Reader(Protocol):
    """What a route reads a resource type through: one back end, several, or none."""

    async def list(self, query: Query, base: str) -> tuple[list[Resource], int]: ...

    async def get(self, ident: str, base: str) -> Resource | None: ...

    @property
    def routes(self) -> Sequence[BackendRoute]:
        """The back ends behind this reader, for wiring writes, actions and detectors."""
        ...


@dataclass(frozen=True, slots=True)
class BackendRoute:
    """One back end serving a resource type: ids it owns carry `prefix` (federation)."""

    backend: str
    prefix: str
    reader: ResourceReader
    #: The billing accounts it holds (a pattern on their ids); None: any.
    accounts: re.Pattern[str] | None = None


@dataclass(slots=True)
class ResourceReader:
    mapping: CompiledMapping
    source: Source
    backend: str
    attributes: AttributeTypes
    timeout: float
    batch_size: int = 500
    #: Retries, breaker and bulkhead of the back end (None: one plain call per read).
    guard: BackendGuard | None = None
    #: Where GET answers are kept (None: not cached).
    cache: ReadCache | None = None
    #: Back-end records one request may make the gateway read (gateway/scan_budget.py).
    scan_budget: int | None = None

    @property
    def routes(self) -> Sequence[BackendRoute]:
        return (BackendRoute(self.backend, "", self),)

    async def list(self, query: Query, base: str) -> tuple[builtins.list[Resource], int]:
        try:
            result: tuple[builtins.list[Resource], int] = await self._read(
                "list", query_key(query), base, lambda: self._list(query, base)
            )
        except BackendDown as down:
            if not tolerance.leave_out(self.backend, down):
                raise
            return [], 0  # a federated list goes on without this back end
        tolerance.answered()
        return result

    async def get(self, ident: str, base: str) -> Resource | None:
        cache, request = self.cache, current_request()
        if (
            cache is not None
            and request is not None
            and request.cacheable
            and self.guard is not None
        ):
            key = (self.backend, self.mapping.collection, "get", ident, base)
            hit = cache.fresh(key, request)  # the fast path: nothing made for a miss
            if hit is not MISSING:
                fresh: Resource = hit
                return fresh
        found: Resource | None = await self._read(
            "get", ident, base, lambda: self._get(ident, base)
        )
        return found

    def forget(self, ident: str | None = None) -> None:
        """Drop cached lists, and the resource `ident` (every one when None): it changed."""
        if self.cache is not None:
            self.cache.invalidate(self.backend, self.mapping.collection, ident)

    async def _read(
        self, kind: str, detail: Hashable, base: str, fetch: Callable[[], Awaitable[T]]
    ) -> T:
        if self.guard is None:
            async with backend_call(self.backend, self.timeout):
                return await fetch()
        guard = self.guard
        request = current_request()
        if self.cache is None or request is None or not request.cacheable:
            return await guard.read(fetch, self.timeout, kind)
        key = (self.backend, self.mapping.collection, kind, detail, base)
        result: T = await self.cache.read(
            key, lambda: guard.read(fetch, self.timeout, kind), request
        )
        return result

    async def _list(self, query: Query, base: str) -> tuple[builtins.list[Resource], int]:
        plan = plan_read(query, self.mapping, self.source)
        if plan.windowed_by_backend:
            page = await self.source.page(plan.backend)
            page = checked_page(self.backend, self.source.key_column, plan.backend, page)
            to_tmf = self.mapping.to_tmf
            return [to_tmf(record, base) for record in page.records], page.total
        return await self._scan(plan, query, base)

    async def _get(self, ident: str, base: str) -> Resource | None:
        by_id = Filter("id", "eq", (ident,), "id")
        predicate = reverse_filter(by_id, self.mapping, self.source)
        if predicate is None:  # ids the back end cannot look up: find it ourselves
            found, _ = await self._list(Query(filters=(by_id,), limit=1), base)
            return found[0] if found else None
        record = await self.source.one(predicate)
        return None if record is None else self.mapping.to_tmf(record, base)

    async def _scan(
        self, plan: ReadPlan, query: Query, base: str
    ) -> tuple[builtins.list[Resource], int]:
        matches = compile_filters(plan.residual, self.attributes.types)
        to_tmf = self.mapping.to_tmf
        end = query.offset + query.limit
        total = 0
        window: builtins.list[Resource] = []  # (`list` is also a method here)
        key = sort_key(query.sort, self.attributes.types) if plan.sort_in_gateway else None
        budget = self.scan_budget
        if budget is not None:
            await check_before_scan(self.source, plan, self.mapping, budget)
        read = 0
        batches = self.source.stream(plan.backend, self.batch_size)
        async for records in checked_stream(self.backend, self.source.key_column, batches):
            read += len(records)
            if budget is not None and read > budget:
                raise too_broad(plan, self.mapping, budget)
            batch = [r for r in (to_tmf(record, base) for record in records) if matches(r)]
            if key is not None:
                # nsmallest is stable: earlier (back-end key order) wins ties.
                window = heapq.nsmallest(end, [*window, *batch], key=key) if end else []
            else:
                start = max(query.offset - total, 0)
                window.extend(batch[start : max(end - total, 0)])
            total += len(batch)
        return window[query.offset :] if key is not None else window, total


class EmptyReader:
    """A resource no back end serves: every read is a 501, not an empty 200."""

    def __init__(self, schema: str) -> None:
        self.schema = schema

    async def list(self, query: Query, base: str) -> tuple[list[Resource], int]:
        raise self._not_configured()

    async def get(self, ident: str, base: str) -> Resource | None:
        raise self._not_configured()

    def _not_configured(self) -> ApiError:
        return ApiError(501, "Not implemented", f"No back end is configured for {self.schema}")

    @property
    def routes(self) -> Sequence[BackendRoute]:
        return ()
