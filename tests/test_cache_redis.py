"""The read cache in Redis (gateway/cache_redis.py): shared by instances, exact invalidation.

Against the real Redis at 127.0.0.1:6379 (`TEST_REDIS_URL` names another), each test
under its own key prefix, its keys deleted afterwards. Without Redis the tests skip
saying how to start it; under `CI=true` they fail. Two gateways (two apps with their
lifespans, one SQLite back end) stand for two instances behind a load balancer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.cache_redis import RedisReadCache
from gateway.calls import BackendDown
from gateway.config import CacheSettings, ResilienceSettings
from gateway.request_scope import request_scope
from tests.conftest import API, assert_valid, gateway_config

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BILLS = f"{API}/customerBill"
MERGE = {"Content-Type": "application/merge-patch+json"}


def _redis_or_skip() -> None:
    async def ping() -> None:
        client = Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable Redis
        why = f"Redis is not reachable at {REDIS_URL} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI=true requires it", pytrace=False)
        pytest.skip(
            f"{why}; to run these tests start Redis at 127.0.0.1:6379 (e.g. `docker run"
            " -p 127.0.0.1:6379:6379 redis:7`), or set TEST_REDIS_URL=redis://host:port/db"
        )


def _drop_keys(prefix: str) -> None:
    async def drop() -> None:
        client = Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    asyncio.run(drop())


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    _redis_or_skip()
    name = f"tmf678-test:{uuid.uuid4().hex}:"
    yield name
    _drop_keys(name)


def _settings(prefix: str, url: str = REDIS_URL, **changes: Any) -> CacheSettings:
    return CacheSettings.model_validate(
        {"store": "redis", "redis_url": url, "redis_key_prefix": prefix, **changes}
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on leaving: nothing listens


# Two gateway instances over one back end and one Redis


def _instance(db: Path, store: Path, cache: CacheSettings) -> TestClient:
    config = gateway_config(db, store=store, events=None)
    resilience = ResilienceSettings.model_validate({"cache": cache.model_dump()})
    return TestClient(create_app(config.model_copy(update={"resilience": resilience})))


@pytest.fixture
def instances(scratch_db: Path, tmp_path: Path, prefix: str) -> Iterator[tuple[TestClient, ...]]:
    cache = _settings(prefix, ttl_seconds={"customerBill": 60})
    store = tmp_path / "store.sqlite"
    with _instance(scratch_db, store, cache) as a, _instance(scratch_db, store, cache) as b:
        yield a, b


def _sent_bill(client: TestClient) -> dict[str, Any]:
    """A demo bill in state `sent`, which may be put `onHold`."""
    page = client.get(f"{BILLS}?state=sent&limit=1")
    assert page.status_code == 200, page.text
    bill: dict[str, Any] = page.json()[0]
    return bill


def test_instances_share_an_entry(instances: tuple[TestClient, ...]) -> None:
    a, b = instances
    path = f"{BILLS}/{_sent_bill(a)['id']}"
    first = a.get(path)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    assert_valid("CustomerBill", first.json())
    shared = b.get(path)  # the other instance never read it: Redis answers
    assert shared.status_code == 200 and shared.headers["X-Cache"] == "hit"
    assert shared.json() == first.json()
    assert shared.headers["ETag"] == first.headers["ETag"]
    assert int(shared.headers["Age"]) <= 60


def test_patch_through_one_instance_invalidates_the_others(
    instances: tuple[TestClient, ...],
) -> None:
    a, b = instances
    ident = _sent_bill(a)["id"]
    path, listing = f"{BILLS}/{ident}", f"{BILLS}?id={ident}"
    before = b.get(path)
    assert before.headers["X-Cache"] == "miss" and before.json()["state"] == "sent"
    assert a.get(path).headers["X-Cache"] == "hit"
    assert a.get(listing).headers["X-Cache"] == "miss"
    assert b.get(listing).headers["X-Cache"] == "hit"
    patched = a.patch(path, json={"state": "onHold"}, headers=MERGE)
    assert patched.status_code == 200, patched.text
    seen = b.get(path)  # b was not told in-process: the new token in Redis tells it
    assert seen.headers["X-Cache"] == "miss"
    assert seen.json()["state"] == "onHold"
    assert seen.headers["ETag"] == patched.headers["ETag"]
    relisted = b.get(listing)
    assert relisted.headers["X-Cache"] == "miss"
    assert [bill["state"] for bill in relisted.json()] == ["onHold"]
    assert a.get(path).headers["X-Cache"] == "hit"  # b's fresh read is shared again


def test_redis_unreachable_reads_are_served_by_the_back_end(
    scratch_db: Path, tmp_path: Path
) -> None:
    cache = _settings("tmf678-test:down:", url=f"redis://127.0.0.1:{_closed_port()}/0")
    with _instance(scratch_db, tmp_path / "store.sqlite", cache) as client:
        path = f"{BILLS}/{_sent_bill(client)['id']}"
        for _ in range(2):
            response = client.get(path)
            assert response.status_code == 200, response.text
            assert response.headers["X-Cache"] == "miss"
            assert_valid("CustomerBill", response.json())
        assert client.patch(path, json={"state": "onHold"}, headers=MERGE).status_code == 200
        assert client.get(path).json()["state"] == "onHold"


# The cache object itself, two of them on one Redis


def _key(ident: str = "B-1") -> tuple[str, str, str, str, str]:
    return ("legacy", "customerBill", "get", ident, "http://api")


class _Loads:
    """A back end that counts its calls and answers `value` (or is down)."""

    def __init__(self, value: Any, delay: float = 0.01) -> None:
        self.value, self.delay, self.calls, self.down = value, delay, 0, False

    async def __call__(self) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.down:
            raise BackendDown("legacy", 503, "Down", "down", code="BACKEND_DOWN")
        return self.value


Pair = tuple[RedisReadCache, RedisReadCache]


def _with_pair(prefix: str, body: Callable[[Pair], Awaitable[None]]) -> None:
    """`body` run with two caches on one Redis (two instances), closed afterwards."""
    settings = _settings(prefix, ttl_seconds={"customerBill": 1}, stale_if_error_seconds=0)

    async def run() -> None:
        one, two = RedisReadCache(settings), RedisReadCache(settings)
        try:
            await body((one, two))
        finally:
            await one.close()
            await two.close()

    asyncio.run(run())


async def _read(cache: RedisReadCache, key: Any, load: _Loads) -> tuple[Any, str | None]:
    with request_scope() as scope:
        value = await cache.read(key, load, scope)
        return value, scope.cache


def test_one_flight_per_process_and_entries_shared(prefix: str) -> None:
    _with_pair(prefix, _one_flight_per_process_and_entries_shared)


async def _one_flight_per_process_and_entries_shared(pair: Pair) -> None:
    one, two = pair
    load = _Loads({"id": "B-1", "state": "new"}, delay=0.5)  # all 20 ask while it runs
    answers = await asyncio.gather(*(_read(one, _key(), load) for _ in range(20)))
    assert load.calls == 1
    assert all(value == {"id": "B-1", "state": "new"} for value, _ in answers)
    assert await _read(two, _key(), load) == ({"id": "B-1", "state": "new"}, "hit")
    assert load.calls == 1
    page = _Loads(([{"id": "B-1"}], 1))
    list_key = ("legacy", "customerBill", "list", ("q",), "http://api")
    await _read(one, list_key, page)
    assert await _read(two, list_key, page) == (([{"id": "B-1"}], 1), "hit")  # a tuple again
    assert two.stats().hits == 2 and one.stats().misses == 21


def test_invalidation_reaches_the_other_cache_exactly(prefix: str) -> None:
    _with_pair(prefix, _invalidation_reaches_the_other_cache_exactly)


async def _invalidation_reaches_the_other_cache_exactly(pair: Pair) -> None:
    one, two = pair
    b1, b2 = _Loads({"id": "B-1"}), _Loads({"id": "B-2"})
    page = _Loads(([{"id": "B-1"}], 1))
    list_key = ("legacy", "customerBill", "list", ("q",), "http://api")
    for key, load in ((_key("B-1"), b1), (_key("B-2"), b2), (list_key, page)):
        await _read(one, key, load)
    one.invalidate("legacy", "customerBill", "B-1")
    await one.settled()
    assert (await _read(two, _key("B-1"), b1))[1] == "miss"
    assert (await _read(two, _key("B-2"), b2))[1] == "hit"  # another bill: still cached
    assert (await _read(two, list_key, page))[1] == "miss"  # lists may hold B-1
    two.invalidate("legacy", "customerBill")  # everything in the collection
    await two.settled()
    for key, load in ((_key("B-1"), b1), (_key("B-2"), b2), (list_key, page)):
        assert (await _read(one, key, load))[1] == "miss"


def test_a_load_that_raced_an_invalidation_is_never_served(prefix: str) -> None:
    _with_pair(prefix, _a_load_that_raced_an_invalidation_is_never_served)


async def _a_load_that_raced_an_invalidation_is_never_served(pair: Pair) -> None:
    one, two = pair
    gate = asyncio.Event()

    async def slow() -> Any:
        await gate.wait()
        return {"id": "B-1", "state": "old"}

    reading = asyncio.create_task(_read(one, _key(), slow))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)  # its MGET is done: it saw the tokens before
    two.invalidate("legacy", "customerBill", "B-1")
    await two.settled()
    gate.set()
    assert (await reading)[0]["state"] == "old"  # its caller gets what it read ...
    newer = _Loads({"id": "B-1", "state": "new"})
    assert await _read(two, _key(), newer) == ({"id": "B-1", "state": "new"}, "miss")


def test_entries_expire_by_ttl(prefix: str) -> None:
    asyncio.run(_entries_expire_by_ttl(prefix))


async def _entries_expire_by_ttl(prefix: str) -> None:
    settings = _settings(prefix, ttl_seconds={"customerBill": 1}, stale_if_error_seconds=1)
    cache = RedisReadCache(settings)
    try:
        load = _Loads({"id": "B-1"})
        await _read(cache, _key(), load)
        remaining = await cache.redis.ttl(cache._entry_key(_key()))
        assert 0 < remaining <= 2  # TTL + stale window
        assert (await _read(cache, _key(), load))[1] == "hit"
        await asyncio.sleep(1.1)  # past the TTL: stale, kept only for a back end down
        load.down = True
        assert (await _read(cache, _key(), load))[1] == "stale"
        load.down = False
        assert (await _read(cache, _key(), load))[1] == "miss"
        load.down = True
        deadline = time.monotonic() + 5
        while await cache.redis.exists(cache._entry_key(_key())):
            assert time.monotonic() < deadline, "Redis kept the entry past TTL + stale window"
            await asyncio.sleep(0.1)
        with pytest.raises(BackendDown):  # gone from Redis: nothing to serve stale
            await _read(cache, _key(), load)
    finally:
        await cache.close()


def test_redis_down_bypasses_the_cache_and_counts_it() -> None:
    asyncio.run(_redis_down_bypasses_the_cache_and_counts_it())


async def _redis_down_bypasses_the_cache_and_counts_it() -> None:
    settings = _settings("tmf678-test:down:", url=f"redis://127.0.0.1:{_closed_port()}/0")
    cache = RedisReadCache(settings)
    try:
        load = _Loads({"id": "B-1"})
        answers = await asyncio.gather(*(_read(cache, _key(), load) for _ in range(5)))
        assert all(answer == ({"id": "B-1"}, "miss") for answer in answers)
        assert load.calls == 1  # single flight holds without Redis
        cache.invalidate("legacy", "customerBill", "B-1")
        await cache.settled()  # fails quietly, counted
        assert cache.stats().bypassed >= 2
    finally:
        await cache.close()


def test_redis_store_needs_a_url() -> None:
    with pytest.raises(ValidationError, match="redis_url"):
        CacheSettings.model_validate({"store": "redis"})
    assert CacheSettings().store == "memory"
