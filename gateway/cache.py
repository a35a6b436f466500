"""The read cache: answers kept for a while, identical reads made once, stale when down.

Keys are (back end, collection, `get`/`list`, id or normalized query, API root). A list
key holds the whole `Query`, whose filters include the caller's account scope (the
routes add it, gateway/access.py), so callers with different scopes never share a page;
a resource by id is the same for every caller, and the route checks its scope after the
read. Entries stay fresh `ttl_seconds` (per collection), then may still answer, marked
stale, for `stale_if_error_seconds` while the back end is down or its breaker open. The
store is a cachetools `TLRUCache` bounded by bytes (each entry's JSON size) and, here, by
entries. The gateway's own PATCH and the change detector drop what they changed; other
gateway processes do not tell this one, so the TTL bounds how stale a read may be. With
`store: redis` the entries live in Redis instead, shared by every instance, and
invalidations reach them all (gateway/cache_redis.py).

Concurrent identical reads share one back-end call (single flight): the first starts
it as a task, the others await the same task; a caller that goes away does not cancel
it for the rest.

Cached values are shared: callers must not change what a read returns (the routes
project into new objects). An entry also keeps what the routes rendered of it (body bytes
and ETag per `fields` projection, a few at most), so a hit is not mapped or serialised
again: the read records its entry on the request (`RequestScope.entry`) and the route
asks `rendered` for the bytes, which checks the value it holds is that entry's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, NamedTuple

import orjson
import structlog
from cachetools import TLRUCache

from gateway.calls import BackendDown
from gateway.config import CacheSettings
from gateway.query import Query
from gateway.request_scope import RequestScope

log = structlog.get_logger("gateway.cache")

Key = tuple[str, str, str, Hashable, str]
#: What an entry costs beyond its JSON (key, bookkeeping), in bytes.
_OVERHEAD = 256


#: Renderings kept per entry (distinct `fields` projections); more are rendered each time.
MAX_RENDERS = 4


class Rendered(NamedTuple):
    """A response body as sent, and its entity tag (`rendering` makes one)."""

    body: bytes
    etag: str
    #: The `ETag` and `Content-Length` headers, encoded once.
    etag_header: tuple[bytes, bytes]
    length_header: tuple[bytes, bytes]


def rendering(body: bytes, etag: str) -> Rendered:
    return Rendered(body, etag, (b"etag", etag.encode()), (b"content-length", b"%d" % len(body)))


#: What `ReadCache.fresh` answers when it has nothing fresh.
MISSING: Any = object()


class Entry(NamedTuple):
    value: Any
    #: `time.monotonic()` when it was read from the back end.
    stored: float
    size: int
    #: Bodies rendered from `value`, by projection (see `rendered`).
    renders: dict[Hashable, Rendered]


class CacheStats(NamedTuple):
    """Counters since start and the current fill, for metrics."""

    hits: int
    misses: int
    stale_served: int
    entries: int
    bytes: int
    #: Reads that went to the back end because the shared store (Redis) failed.
    bypassed: int = 0


def rendered(
    entry: Entry | None, content: object, projection: Hashable, render: Callable[[], Rendered]
) -> Rendered:
    """`render()`, kept on `entry` when `content` is that entry's cached value.

    Other content (a federated answer built from several entries, an uncached read) is
    rendered every time.
    """
    if entry is None or entry.value is not content:
        return render()
    done = entry.renders.get(projection)
    if done is None:
        done = render()
        if len(entry.renders) < MAX_RENDERS:
            entry.renders[projection] = done
    return done


class _Entries(TLRUCache[Key, Entry]):
    """A TLRU cache bounded by bytes (its `maxsize`) and by a number of entries."""

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttu: Callable[[Key, Entry, float], float],
        timer: Callable[[], float],
    ) -> None:
        super().__init__(max_bytes, ttu, timer=timer, getsizeof=lambda entry: entry.size)
        self.max_entries = max_entries

    def __setitem__(self, key: Key, value: Entry, *args: Any) -> None:
        if key not in self:
            while len(self) >= self.max_entries:
                self.popitem()
        super().__setitem__(key, value, *args)


def query_key(query: Query) -> Hashable:
    """A query as a key: filters in a fixed order, values sorted where order means nothing.

    `fields` is left out: the routes project after the read.
    """
    filters = []
    for f in query.filters:
        values = tuple(map(repr, f.values))
        filters.append((f.path, f.op, tuple(sorted(values)) if f.op in ("eq", "ne") else values))
    return (tuple(sorted(filters)), query.sort, query.offset, query.limit)


class ReadCache:
    def __init__(self, settings: CacheSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._clock = clock
        self._ttl: dict[str, float] = {str(k): v for k, v in settings.ttl_seconds.items()}
        self._entries = _Entries(settings.max_entries, settings.max_bytes, self._until, clock)
        self._flights: dict[Key, asyncio.Task[Any]] = {}
        #: Bumped by every invalidation of (back end, collection): a read that started
        #: before it does not store what it read.
        self._generation: dict[tuple[str, str], int] = {}
        self.hits = self.misses = self.stale = 0

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, self.stale, len(self._entries), self.bytes)

    def ttl(self, collection: str) -> float:
        return self._ttl.get(collection, self.settings.default_ttl_seconds)

    def _until(self, key: Key, entry: Entry, now: float) -> float:
        """When an entry is dropped: fresh for its TTL, then kept as a stale fallback."""
        return entry.stored + self.ttl(key[1]) + self.settings.stale_if_error_seconds

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return int(self._entries.currsize)

    def age(self, key: Key) -> float | None:
        """Seconds since the entry was read from its back end (None: not cached)."""
        entry = self._entries.get(key)
        return None if entry is None else self._clock() - entry.stored

    def fresh(self, key: Key, scope: RequestScope) -> Any:
        """The cached answer while it is fresh (recorded on `scope` as a hit); else MISSING.

        Synchronous, for the readers' fast path: a hit needs no task, no load function.
        """
        try:
            entry = self._entries[key]
        except KeyError:
            return MISSING
        age = self._clock() - entry.stored
        ttl = self._ttl.get(key[1], self.settings.default_ttl_seconds)
        if age > ttl:
            return MISSING
        self.hits += 1
        scope.served("hit", age, ttl, entry)
        return entry.value

    async def read(self, key: Key, load: Callable[[], Awaitable[Any]], scope: RequestScope) -> Any:
        """The cached answer while fresh; else one load for all who ask; stale if down."""
        found = self.fresh(key, scope)
        if found is not MISSING:
            return found
        try:
            value = await self._flight(key, load)
        except BackendDown:
            fallback = self._entries.get(key)
            if fallback is None:
                raise
            stale_age = self._clock() - fallback.stored
            if stale_age > self.ttl(key[1]) + self.stale_window:
                raise
            self.stale += 1
            log.info(
                "served_stale", backend=key[0], collection=key[1], age_seconds=round(stale_age)
            )
            scope.served("stale", stale_age, self.ttl(key[1]), fallback)
            return fallback.value
        self.misses += 1
        stored = self._entries.get(key)
        scope.served("miss", None, self.ttl(key[1]), stored)
        return value

    @property
    def stale_window(self) -> float:
        return self.settings.stale_if_error_seconds

    def _flight(self, key: Key, load: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        task = self._flights.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key, load))
            self._flights[key] = task
            task.add_done_callback(lambda done: self._landed(key, done))
        return asyncio.shield(task)

    def _landed(self, key: Key, task: asyncio.Task[Any]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: it was the waiters' to see, if any are left

    async def _load(self, key: Key, load: Callable[[], Awaitable[Any]]) -> Any:
        generation = self._generation.get((key[0], key[1]), 0)
        value = await load()
        if value is not None and self._generation.get((key[0], key[1]), 0) == generation:
            self._store(key, value)
        return value

    def _store(self, key: Key, value: Any) -> None:
        try:
            size = len(orjson.dumps(value)) + _OVERHEAD
        except TypeError:
            return  # not JSON: not a TMF answer, not cached
        if size > self.settings.max_bytes:
            return
        self._entries[key] = Entry(value, self._clock(), size, {})

    async def settled(self) -> None:
        """Wait until invalidations have reached the store (in memory: at once)."""

    async def close(self) -> None:
        """Release the store's connections (in memory: none)."""

    def invalidate(self, backend: str, collection: str, ident: str | None = None) -> int:
        """Drop the lists of a collection, and its resource `ident` (all when None)."""
        group = (backend, collection)
        self._generation[group] = self._generation.get(group, 0) + 1
        dropped = 0
        for key in list(self._entries.keys()):
            if key[:2] == group and (key[2] == "list" or ident is None or key[3] == ident):
                self._entries.pop(key, None)
                dropped += 1
        for key in [k for k in self._flights if k[:2] == group]:
            del self._flights[key]  # later readers start afresh; waiters keep their task
        return dropped
