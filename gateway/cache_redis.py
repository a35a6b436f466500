"""The read cache in Redis: one cache for every instance, invalidations reaching them all.

The same contract as `ReadCache` (gateway/cache.py): fresh for the collection's TTL, then
served stale while the back end is down, one back-end call for concurrent identical reads
(single flight stays in the process). What differs:

- An entry is a Redis string (`SET ... EX`, living TTL + stale window) holding the answer
  as JSON, the wall-clock time it was read and the generation tokens it was read under.
- Invalidation is exact without locks: each (back end, collection) has a `lists` token,
  an `all` token and one token per resource id, each a Redis key set to a fresh random
  value by `invalidate`. A read fetches its entry and its tokens in one `MGET`; an entry
  read under other tokens is dropped (never served, even stale). A load that raced an
  invalidation stores the tokens it saw before, so what it stores is never served. A token
  key lives longer than any entry, so when it expires no entry read under it is left.
- `invalidate` is synchronous (its callers are); it starts the Redis write as a task.
  This process's reads wait for it, and `settled()` lets a writer wait before answering.
- Redis unreachable, slow (each call has `redis_timeout_seconds`) or failing: the read goes
  to the back end uncached, logged and counted (`bypassed`); never an error to the caller.
- Nothing is kept in the process, so `fresh` always misses and a hit costs one round trip;
  rendered bodies are not shared between requests (the routes render each hit).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.cache import MISSING, CacheStats, Entry, Key, ReadCache
from gateway.calls import BackendDown
from gateway.config import CacheSettings
from gateway.request_scope import RequestScope

log = structlog.get_logger("gateway.cache")

#: A token key outlives every entry read under it by at least this long (seconds).
_TOKEN_MARGIN = 60


class _Unavailable(Exception):
    """Redis did not answer in time, or failed: the read bypasses the cache."""


class RedisReadCache(ReadCache):
    def __init__(
        self,
        settings: CacheSettings,
        client: Redis | None = None,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(settings, clock)
        timeout = settings.redis_timeout_seconds
        self.redis = client or Redis.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.prefix = settings.redis_key_prefix
        self.timeout = timeout
        self.bypassed = 0
        self._pending: set[asyncio.Task[None]] = set()
        longest = max([settings.default_ttl_seconds, *self._ttl.values()])
        self._token_life = int(longest + settings.stale_if_error_seconds) + _TOKEN_MARGIN

    async def close(self) -> None:
        await self.settled()
        await self.redis.aclose()

    def stats(self) -> CacheStats:
        """Counters of this process; entries and bytes live in Redis (0 here)."""
        return CacheStats(self.hits, self.misses, self.stale, 0, 0, self.bypassed)

    def age(self, key: Key) -> float | None:
        return None  # kept in Redis: `read` reports the age on the request

    def fresh(self, key: Key, scope: RequestScope) -> Any:
        return MISSING  # a Redis read needs a round trip: `read` does it

    # keys

    def _entry_key(self, key: Key) -> str:
        digest = hashlib.sha256(repr(key).encode()).hexdigest()
        return f"{self.prefix}entry:{key[0]}:{key[1]}:{digest}"

    def _token(self, backend: str, collection: str, name: str) -> str:
        return f"{self.prefix}token:{backend}:{collection}:{name}"

    def _tokens_of(self, key: Key) -> list[str]:
        """The tokens an entry is valid under: lists, or every resource and this one."""
        backend, collection, kind = key[0], key[1], key[2]
        if kind == "list":
            return [self._token(backend, collection, "lists")]
        return [
            self._token(backend, collection, "all"),
            self._token(backend, collection, f"id:{key[3]}"),
        ]

    async def _call(self, call: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise _Unavailable(type(exc).__name__) from exc

    def _bypass(self, doing: str, exc: _Unavailable) -> None:
        self.bypassed += 1
        log.warning("cache_unavailable", store="redis", doing=doing, error=str(exc))

    # reads

    async def read(self, key: Key, load: Callable[[], Awaitable[Any]], scope: RequestScope) -> Any:
        """Fresh from Redis; else one load for all who ask here; stale if down."""
        await self.settled()
        ttl = self.ttl(key[1])
        try:
            found = await self._call(self.redis.mget([self._entry_key(key), *self._tokens_of(key)]))
        except _Unavailable as exc:
            self._bypass("read", exc)
            value = await self._flight_tokens(key, load, None)
            self.misses += 1
            scope.served("miss", None, ttl, None)
            return value
        raw, tokens = found[0], [t.decode() if t else "" for t in found[1:]]
        entry = self._decode(key, raw, tokens)
        age = None if entry is None else max(0.0, self._clock() - entry.stored)
        if entry is not None and age is not None and age <= ttl:
            self.hits += 1
            scope.served("hit", age, ttl, entry)
            return entry.value
        try:
            value = await self._flight_tokens(key, load, tokens)
        except BackendDown:
            if entry is None or age is None or age > ttl + self.stale_window:
                raise
            self.stale += 1
            log.info("served_stale", backend=key[0], collection=key[1], age_seconds=round(age))
            scope.served("stale", age, ttl, entry)
            return entry.value
        self.misses += 1
        scope.served("miss", None, ttl, None)
        return value

    def _decode(self, key: Key, raw: bytes | None, tokens: list[str]) -> Entry | None:
        """The entry, when it was read under the current tokens (else it was invalidated)."""
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if data.get("tokens") != tokens:
            return None
        value = data["value"]
        if key[2] == "list":  # a list answer is (page, total)
            value = (value[0], value[1])
        return Entry(value, float(data["stored"]), len(raw), {})

    def _flight_tokens(
        self, key: Key, load: Callable[[], Awaitable[Any]], tokens: list[str] | None
    ) -> Awaitable[Any]:
        """`ReadCache._flight`, storing under `tokens` (not at all when None)."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.create_task(self._load_into(key, load, tokens))
            self._flights[key] = task
            task.add_done_callback(lambda done: self._landed(key, done))
        return asyncio.shield(task)

    async def _load_into(
        self, key: Key, load: Callable[[], Awaitable[Any]], tokens: list[str] | None
    ) -> Any:
        value = await load()
        if value is not None and tokens is not None:
            await self._put(key, value, tokens)
        return value

    async def _put(self, key: Key, value: Any, tokens: list[str]) -> None:
        try:
            payload = orjson.dumps({"value": value, "stored": self._clock(), "tokens": tokens})
        except TypeError:
            return  # not JSON: not a TMF answer, not cached
        if len(payload) > self.settings.max_bytes:
            return
        life = max(1, int(self.ttl(key[1]) + self.stale_window + 0.999))
        try:
            await self._call(self.redis.set(self._entry_key(key), payload, ex=life))
        except _Unavailable as exc:
            self._bypass("store", exc)

    # invalidation

    def invalidate(self, backend: str, collection: str, ident: str | None = None) -> int:
        """New tokens for the lists of a collection and `ident` (every resource when None).

        Returns 0: what is dropped lives in Redis and is not counted.
        """
        names = ["lists", "all" if ident is None else f"id:{ident}"]
        task = asyncio.get_running_loop().create_task(
            self._renew([self._token(backend, collection, n) for n in names])
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        group = (backend, collection)
        for key in [k for k in self._flights if k[:2] == group]:
            del self._flights[key]  # later readers start afresh; waiters keep their task
        return 0

    async def _renew(self, tokens: list[str]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for token in tokens:
            pipe.set(token, uuid.uuid4().hex, ex=self._token_life)
        try:
            await self._call(pipe.execute())
        except _Unavailable as exc:
            # Readers bypass while Redis is down; when it is back, entries stored before
            # expire within their TTL + stale window, as in another process's memory.
            self._bypass("invalidate", exc)

    async def settled(self) -> None:
        """Wait for the invalidations this process started to reach Redis."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
