"""HTTP caching of reads: strong ETags, 304 on If-None-Match, Cache-Control and Age.

The gateway runs for real (uvicorn on loopback, its lifespan opening the services) over
a private copy of the demo SQLite database, with authentication on: tokens are signed
in the test, each limited to some billing accounts, so that what one caller may see
and what another may not is checked on every cached read and every 304.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth import AuthSettings
from gateway.cache import MAX_RENDERS, ReadCache, rendered, rendering
from gateway.calls import BackendDown
from gateway.config import CacheSettings, ResilienceSettings
from gateway.request_scope import request_scope
from gateway.routes import none_match
from tests.conftest import API, assert_valid, gateway_config
from tests.test_resilience import GatewayServer
from tests.tokens import ISSUER, Signer

BILLS = f"{API}/customerBill"
TTL = 60
ALICE_ACCOUNTS = ("BA-000003",)
BOB_ACCOUNTS = ("BA-000010", "BA-000011")

Headers = Callable[..., dict[str, str]]


@pytest.fixture
def signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()), "ES256", "cache-tests")


@pytest.fixture
def gateway(scratch_db: Path, tmp_path: Path, signer: Signer) -> Iterator[GatewayServer]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [signer.jwk]}))
    config = gateway_config(scratch_db, store=tmp_path / "store.sqlite", events=None)
    resilience = ResilienceSettings.model_validate(
        {"cache": {"ttl_seconds": {"customerBill": TTL, "billCycle": TTL}}}
    )
    auth = AuthSettings(enabled=True, issuer=ISSUER, jwks_file=jwks)
    with GatewayServer(config.model_copy(update={"auth": auth, "resilience": resilience})) as gw:
        yield gw


@pytest.fixture
def token(signer: Signer) -> Headers:
    def headers(*accounts: str, scope: str = "tmf678:read", **extra: str) -> dict[str, str]:
        bearer = signer.token(scope=scope, billing_accounts=list(accounts))
        return {"Authorization": f"Bearer {bearer}", **extra}

    return headers


def first_bill(gw: GatewayServer, alice: dict[str, str]) -> dict[str, Any]:
    page = gw.http.get(f"{BILLS}?limit=1", headers=alice)
    assert page.status_code == 200, page.text
    bill: dict[str, Any] = page.json()[0]
    return bill


def assert_not_modified(response: httpx.Response, etag: str) -> None:
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == f"private, max-age={TTL}"
    assert "content-type" not in response.headers


def test_a_bill_is_revalidated_with_304(gateway: GatewayServer, token: Headers) -> None:
    alice = token(*ALICE_ACCOUNTS)
    path = f"{BILLS}/{first_bill(gateway, alice)['id']}"
    gateway.app.state.services.customer_bills.forget()  # the page above cached nothing here
    first = gateway.http.get(path, headers=alice)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    assert_valid("CustomerBill", first.json())
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')  # strong: no W/
    assert first.headers["Cache-Control"] == f"private, max-age={TTL}"
    assert "Age" not in first.headers  # just read from the back end

    again = gateway.http.get(path, headers=alice)
    assert again.headers["X-Cache"] == "hit" and int(again.headers["Age"]) >= 0
    assert again.content == first.content and again.headers["ETag"] == etag

    for condition in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        not_modified = gateway.http.get(path, headers={**alice, "If-None-Match": condition})
        assert_not_modified(not_modified, etag)
        assert not_modified.headers["X-Cache"] == "hit" and "Age" in not_modified.headers
    changed = gateway.http.get(path, headers={**alice, "If-None-Match": '"other", W/"x"'})
    assert changed.status_code == 200 and changed.content == first.content


def test_the_etag_covers_the_projection_and_is_what_if_match_takes(
    gateway: GatewayServer, token: Headers
) -> None:
    alice = token(*ALICE_ACCOUNTS, scope="tmf678:read tmf678:write")
    bill = first_bill(gateway, alice)
    path = f"{BILLS}/{bill['id']}"
    full = gateway.http.get(path, headers=alice)
    projected = gateway.http.get(f"{path}?fields=state", headers=alice)
    assert set(projected.json()) == {"id", "href", "@type", "state"}
    assert projected.headers["ETag"] != full.headers["ETag"]
    other_body = {**alice, "If-None-Match": full.headers["ETag"]}
    assert gateway.http.get(f"{path}?fields=state", headers=other_body).status_code == 200
    same_body = {**alice, "If-None-Match": projected.headers["ETag"]}
    assert_not_modified(
        gateway.http.get(f"{path}?fields=state", headers=same_body), projected.headers["ETag"]
    )

    state = "onHold" if bill["state"] != "onHold" else "new"
    patched = gateway.http.patch(
        path,
        json={"state": state},
        headers={
            **alice,
            "Content-Type": "application/merge-patch+json",
            "If-Match": full.headers["ETag"],
        },
    )
    assert patched.status_code == 200, patched.text
    assert patched.headers["Cache-Control"] == "no-store"  # a write's answer is not kept
    # The PATCH dropped the cached bill: the old tag no longer matches.
    fresh = gateway.http.get(path, headers=other_body)
    assert fresh.status_code == 200 and fresh.headers["X-Cache"] == "miss"
    assert fresh.json()["state"] == state
    assert fresh.headers["ETag"] not in (full.headers["ETag"], projected.headers["ETag"])
    assert fresh.headers["ETag"] == patched.headers["ETag"]


def test_list_pages_have_their_own_etags(gateway: GatewayServer, token: Headers) -> None:
    alice = token(*ALICE_ACCOUNTS)
    page = gateway.http.get(f"{BILLS}?limit=2", headers=alice)
    assert page.status_code == 200 and page.headers["Cache-Control"] == f"private, max-age={TTL}"
    for item in page.json():
        assert_valid("CustomerBill", item)
    etag = page.headers["ETag"]
    revalidated = gateway.http.get(f"{BILLS}?limit=2", headers={**alice, "If-None-Match": etag})
    assert_not_modified(revalidated, etag)
    assert revalidated.headers["X-Total-Count"] == page.headers["X-Total-Count"]
    next_page = gateway.http.get(f"{BILLS}?limit=2&offset=2", headers=alice)
    assert next_page.headers["ETag"] != etag
    projected = gateway.http.get(f"{BILLS}?limit=2&fields=state", headers=alice)
    assert projected.headers["X-Cache"] == "hit" and projected.headers["ETag"] != etag


def test_another_account_never_gets_a_304_or_the_entry_of_someone_else(
    gateway: GatewayServer, token: Headers
) -> None:
    alice, bob = token(*ALICE_ACCOUNTS), token(*BOB_ACCOUNTS)
    bill = first_bill(gateway, alice)
    path = f"{BILLS}/{bill['id']}"
    mine = gateway.http.get(path, headers=alice)
    assert mine.status_code == 200
    # Bob sends Alice's tag: the cached bill is not his, so 404 (as for any unknown id).
    hidden = gateway.http.get(path, headers={**bob, "If-None-Match": mine.headers["ETag"]})
    assert hidden.status_code == 404 and hidden.headers["X-Cache"] == "hit"
    assert_valid("Error", hidden.json())
    assert hidden.headers["Cache-Control"] == "no-store" and "ETag" not in hidden.headers
    star = gateway.http.get(path, headers={**bob, "If-None-Match": "*"})
    assert star.status_code == 404

    alices_page = gateway.http.get(f"{BILLS}?limit=5", headers=alice)
    bobs_page = gateway.http.get(
        f"{BILLS}?limit=5", headers={**bob, "If-None-Match": alices_page.headers["ETag"]}
    )
    assert bobs_page.status_code == 200 and bobs_page.headers["X-Cache"] == "miss"
    assert {b["billingAccount"]["id"] for b in bobs_page.json()} <= set(BOB_ACCOUNTS)
    assert bobs_page.headers["ETag"] != alices_page.headers["ETag"]


def test_errors_writes_and_uncached_answers_stay_no_store(
    gateway: GatewayServer, token: Headers
) -> None:
    alice = token(*ALICE_ACCOUNTS)
    missing = gateway.http.get(f"{BILLS}/0", headers=alice)
    assert missing.status_code == 404 and missing.headers["Cache-Control"] == "no-store"
    refused = gateway.http.get(f"{BILLS}/1")
    assert refused.status_code == 401 and refused.headers["Cache-Control"] == "no-store"
    bad = gateway.http.get(f"{BILLS}?state.foo=1", headers=alice)
    assert bad.status_code == 400 and bad.headers["Cache-Control"] == "no-store"
    hub = gateway.http.post(f"{API}/hub", json={"callback": "http://x"}, headers=alice)
    assert hub.status_code >= 400 and hub.headers["Cache-Control"] == "no-store"
    health = gateway.http.get("/health")
    assert health.headers["Cache-Control"] == "no-store"


def test_head_is_answered_like_get_without_a_body(gateway: GatewayServer, token: Headers) -> None:
    alice = token(*ALICE_ACCOUNTS)
    bill = first_bill(gateway, alice)
    got = gateway.http.get(f"{BILLS}/{bill['id']}", headers=alice)
    head = gateway.http.head(f"{BILLS}/{bill['id']}", headers=alice)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["ETag"] == got.headers["ETag"]
    assert head.headers["Content-Length"] == got.headers["Content-Length"]


# The cache itself.


def test_none_match_compares_weakly() -> None:
    assert none_match('"a"', '"a"') and none_match('W/"a"', '"a"') and none_match("*", '"a"')
    assert none_match('"b", W/"a"', '"a"') and none_match('"b",W/"a"', '"a"')
    assert not none_match('"b"', '"a"') and not none_match("a", '"a"')
    assert not none_match('"a,b"', '"a"')  # a comma inside a tag is part of it


def test_stats_count_hits_misses_and_stale_answers() -> None:
    now = [0.0]
    settings = CacheSettings(ttl_seconds={"customerBill": 10}, stale_if_error_seconds=60)
    cache = ReadCache(settings, clock=lambda: now[0])
    key = ("b", "customerBill", "get", "1", "")

    async def load() -> dict[str, str]:
        return {"id": "1"}

    async def down() -> dict[str, str]:
        raise BackendDown("b", 503, "Down", "down", code="BACKEND_DOWN")

    async def reads() -> None:
        with request_scope() as scope:
            await cache.read(key, load, scope)
            await cache.read(key, load, scope)
            assert scope.cache == "hit"
        now[0] = 30.0  # past the TTL, within the stale window
        with request_scope() as scope:
            assert await cache.read(key, down, scope) == {"id": "1"}
            assert scope.cache == "stale" and scope.age == 30.0 and scope.ttl == 10

    asyncio.run(reads())
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.stale_served, stats.entries) == (1, 1, 1, 1)
    assert stats.bytes == cache.bytes > len(b'{"id":"1"}')


def test_what_is_rendered_is_kept_with_its_entry_only() -> None:
    cache = ReadCache(CacheSettings())
    key = ("b", "customerBill", "get", "1", "")
    value = {"id": "1", "state": "new"}

    async def load() -> dict[str, str]:
        return value

    async def read() -> Any:
        with request_scope() as scope:
            await cache.read(key, load, scope)
            return scope.entry

    entry = asyncio.run(read())
    made: list[int] = []

    def render(n: int) -> Callable[[], Any]:
        def make() -> Any:
            made.append(n)
            return rendering(json.dumps(value).encode(), f'"{n}"')

        return make

    assert rendered(entry, value, None, render(1)) == rendered(entry, value, None, render(2))
    assert made == [1]  # the second was the kept one
    other = dict(value)  # equal, but not the entry's value (a federated copy, say)
    rendered(entry, other, None, render(3))
    rendered(entry, other, None, render(4))
    assert made == [1, 3, 4]
    for n in range(10):
        rendered(entry, value, ("f", n), render(10 + n))
    assert len(entry.renders) == MAX_RENDERS
