"""The gateway shields its back ends and its callers: retries, breaker, bulkhead, cache.

The gateway runs for real on loopback (uvicorn, its lifespan opening the services) in
front of the REST simulator, with the fault-injecting proxy of tests/faults.py between
them: every fault is a real socket doing the wrong thing. The proxy counts the calls
that reach the back end.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from adapters.base import BackendError
from gateway.app import create_app
from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.cache import ReadCache, query_key
from gateway.calls import BackendDown
from gateway.config import (
    BackendPolicy,
    BreakerSettings,
    CacheSettings,
    GatewayConfig,
    ResilienceSettings,
    load_config,
)
from gateway.memory import BurstRecovery
from gateway.query import Filter, Query
from gateway.request_scope import request_scope
from gateway.resilience import BackendGuard
from simulators.rest_billing import create_app as create_simulator
from simulators.rest_billing import seed
from tests.conftest import API, ROOT, assert_valid
from tests.faults import FaultProxy
from tests.servers import ThreadedServer

BILL = f"{API}/customerBill"


class GatewayServer:
    """The gateway app served by uvicorn in a thread, its lifespan run (services opened)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.app = create_app(config)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.02)
        self.http = httpx.Client(base_url=self.base, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self._server.should_exit = True
        self._thread.join(timeout=15)

    @property
    def guard(self) -> BackendGuard:
        return self.app.state.services.readiness.resilience.guard("enterprise")

    @property
    def cache(self) -> ReadCache:
        bills = self.app.state.services.customer_bills
        cache: ReadCache = bills.routes[0].reader.cache
        return cache


@pytest.fixture
def backend() -> Iterator[FaultProxy]:
    """The REST simulator behind the fault proxy; `backend.data` is the simulator's state."""
    simulator = create_simulator(seed())
    with ThreadedServer(simulator) as server, FaultProxy(server.port) as proxy:
        proxy.data = simulator.state.data  # type: ignore[attr-defined]
        yield proxy


Gateway = Callable[..., GatewayServer]


@pytest.fixture
def gateway(
    backend: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Gateway]:
    """Start a gateway over the proxied REST back end with the given settings."""
    monkeypatch.setenv("ENTERPRISE_URL", backend.base)
    monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
    running: list[GatewayServer] = []

    def start(timeout: float = 1.0, config: Path | None = None, **resilience: Any) -> GatewayServer:
        server = GatewayServer(
            configured(config or ROOT / "config" / "rest.yaml", timeout, resilience)
        )
        running.append(server.__enter__())
        return server

    yield start
    for server in running:
        server.__exit__()


def configured(path: Path, timeout: float, resilience: dict[str, Any]) -> GatewayConfig:
    config = load_config(path)
    backends = dict(config.backends)
    backends["enterprise"] = backends["enterprise"].model_copy(update={"timeout_seconds": timeout})
    defaults: dict[str, Any] = {"default": {"retry": {"base_seconds": 0.01}}}
    settings = ResilienceSettings.model_validate(merge(defaults, resilience))
    return config.model_copy(update={"backends": backends, "resilience": settings})


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        out[key] = (
            merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
        )
    return out


def invoice_ids(backend: FaultProxy) -> list[str]:
    return sorted(backend.data.invoices)  # type: ignore[attr-defined]


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert_valid("Error", body)
    return body


# Retries.


def test_flaky_back_end_reads_are_retried_until_they_succeed(
    gateway: Gateway, backend: FaultProxy
) -> None:
    gw = gateway()
    ids = invoice_ids(backend)[:60]
    backend.inject("reset", rate=0.3, paths=("/api/",), seed=7)
    answers = [gw.http.get(f"{BILL}/{ident}") for ident in ids]
    assert [a.status_code for a in answers] == [200] * len(ids)
    assert [a.json()["id"] for a in answers] == ids
    # About 30 % of the calls failed and were made again (the bench counts 300 GETs).
    assert backend.faulted > 10
    assert len(ids) < backend.calls() == len(ids) + backend.faulted <= 1.6 * len(ids)


def test_flaky_503_replies_are_retried(gateway: Gateway, backend: FaultProxy) -> None:
    gw = gateway()
    ids = invoice_ids(backend)[:40]
    backend.inject("status", status=503, rate=0.3, paths=("/api/",), seed=7)
    assert [gw.http.get(f"{BILL}/{i}").status_code for i in ids] == [200] * len(ids)


@pytest.mark.parametrize(
    ("fault", "status", "attempts"),
    [
        ("reset", 503, 4),  # reset before any reply: retried, then unavailable
        ("reset_mid", 503, 4),
        ("truncate", 503, 4),
        ("html", 502, 1),  # an answer that is not the API's: not retried, a bad gateway
        ("blackhole", 504, None),  # no answer: retried while the deadline allows
        ("hang", 504, None),
        ("delay", 504, None),
    ],
)
def test_each_fault_is_answered_as_its_kind(
    gateway: Gateway, backend: FaultProxy, fault: str, status: int, attempts: int | None
) -> None:
    gw = gateway(timeout=0.3, request_deadline_seconds=1.0)
    gw.http.get(f"{BILL}/EI-000001")  # the token is fetched, the connection made
    before, tries = backend.calls(), gw.guard.attempts
    backend.inject(fault, delay=0.6, paths=("/api/",))
    started = time.monotonic()
    response = gw.http.get(f"{BILL}/EI-000002")
    elapsed = time.monotonic() - started
    body = error(response, status)
    assert "'enterprise'" in body["message"]
    made = gw.guard.attempts - tries
    # (The transport itself sends a GET again once when a kept-alive connection fails.)
    assert made <= backend.calls() - before <= 2 * made
    if attempts is not None:
        assert made == attempts
    else:  # each try timed out after 0.3 s; the request's deadline (1 s) ended the retries
        assert 2 <= made <= 4
        assert elapsed < 1.0 + 0.25
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1
    assert gw.http.get("/health").status_code == 200


def test_connection_refused_is_retried_then_503(gateway: Gateway, backend: FaultProxy) -> None:
    gw = gateway()
    gw.http.get(f"{BILL}/EI-000001")
    backend.inject("refuse")
    started = time.monotonic()
    body = error(gw.http.get(f"{BILL}/EI-000002"), 503)
    assert "'enterprise'" in body["message"] and time.monotonic() - started < 1
    assert gw.guard.attempts == 1 + 4
    backend.heal()
    assert gw.http.get(f"{BILL}/EI-000002").status_code == 200


def test_one_deadline_for_all_the_calls_of_a_request(gateway: Gateway, backend: FaultProxy) -> None:
    """A PATCH reads, writes and reads again: 0.4 s each would be 1.2 s; the deadline is 0.6."""
    gw = gateway(timeout=5.0, request_deadline_seconds=0.6)
    gw.http.get(f"{BILL}/EI-000001")
    backend.inject("delay", delay=0.4, paths=("/api/",))
    started = time.monotonic()
    response = gw.http.patch(
        f"{BILL}/EI-000003",
        json={"state": "onHold"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    elapsed = time.monotonic() - started
    error(response, 504)
    assert 0.6 <= elapsed < 1.0


def test_the_retry_budget_bounds_retries_in_an_outage() -> None:
    """Ten reads failing at once: with 4 tries each they would make 40 calls."""
    policy = BackendPolicy.model_validate(
        {
            "retry": {"attempts": 4, "base_seconds": 0.001, "budget_ratio": 0.2, "budget_min": 3},
            "breaker": {"consecutive_failures": 1000, "min_calls": 1000},
        }
    )
    guard = BackendGuard("legacy", policy)
    in_flight = peak = 0

    async def failing() -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.02)
            raise BackendError("connection reset", status=503)
        finally:
            in_flight -= 1

    async def outage() -> list[BaseException | None]:
        return await asyncio.gather(
            *(guard.read(failing, 1.0) for _ in range(10)), return_exceptions=True
        )

    results = asyncio.run(outage())
    assert all(isinstance(r, BackendDown) and r.status == 503 for r in results)
    assert 10 < guard.attempts <= 10 + 3 * 3
    assert guard.budget.reads == guard.budget.retries == 0


def test_a_reply_that_does_not_fit_the_mapping_is_not_retried(
    gateway: Gateway, backend: FaultProxy
) -> None:
    gw = gateway()
    backend.data.invoices["EI-000004"]["issued_on"] = "not a date"  # type: ignore[attr-defined]
    before = backend.calls()
    body = error(gw.http.get(f"{BILL}/EI-000004"), 502)
    assert body["code"] == "BACKEND_MAPPING_ERROR"
    assert backend.calls() - before == 1
    assert gw.guard.breaker.state == "closed"


# Circuit breaker.


def break_it(gw: GatewayServer, backend: FaultProxy) -> None:
    """Reset every call until the breaker opens."""
    backend.inject("reset", paths=("/api/",))
    for n in range(10):
        response = gw.http.get(f"{BILL}/EI-0000{10 + n}")
        if response.json().get("code") == "BACKEND_CIRCUIT_OPEN":
            return
    raise AssertionError("the breaker did not open")


def test_the_breaker_opens_and_answers_at_once_without_calling(
    gateway: Gateway, backend: FaultProxy
) -> None:
    gw = gateway(default={"breaker": {"cool_down_seconds": 3.0}})
    gw.http.get(f"{BILL}/EI-000001")
    break_it(gw, backend)
    opened = time.monotonic()
    calls = backend.calls()
    took = []
    gc.collect()
    gc.freeze()  # as the server does after start-up (gateway/__main__.py): no gen-2 pauses
    for n in range(200):
        started = time.perf_counter()
        response = gw.http.get(f"{BILL}/EI-{100 + n:06d}")
        took.append(time.perf_counter() - started)
        body = error(response, 503)
        assert body["code"] == "BACKEND_CIRCUIT_OPEN" and "'enterprise'" in body["message"]
        assert 1 <= int(response.headers["Retry-After"]) <= 3
    gc.unfreeze()
    assert time.monotonic() - opened < 3.0, "the loop outlasted the cool-down: too slow"
    assert backend.calls() == calls  # the back end was not touched
    p99 = statistics.quantiles(took, n=100)[98]
    assert p99 < 0.010, f"p99 {p99 * 1000:.1f} ms"

    backend.heal()
    time.sleep(opened + 3.05 - time.monotonic())  # cool-down over: half-open, probes pass
    assert gw.guard.breaker.state == "half-open"
    for n in range(3):
        assert gw.http.get(f"{BILL}/EI-00002{n}").status_code == 200
    assert gw.guard.breaker.state == "closed"


def test_the_breaker_opens_on_a_failure_ratio() -> None:
    clock = [0.0]
    settings = BreakerSettings(
        consecutive_failures=100, failure_ratio=0.5, window_seconds=10, min_calls=10
    )
    breaker = CircuitBreaker("b", settings, clock=lambda: clock[0])
    for n in range(9):  # every other call fails: never 2 in a row
        probe = breaker.admit()
        breaker.record(probe, "boom" if n % 2 else None)
        clock[0] += 1
    assert breaker.state == "closed"  # 4 of 9: below the ratio, and too few calls
    breaker.record(breaker.admit(), "boom")  # 5 of 10
    assert breaker.state == "open"
    with pytest.raises(BreakerOpen) as refused:
        breaker.admit()
    assert refused.value.retry_after == 5
    clock[0] += 5
    assert breaker.state == "half-open"
    probes = [breaker.admit() for _ in range(3)]
    with pytest.raises(BreakerOpen):
        breaker.admit()  # three probes at once, no more
    breaker.record(probes[0], None)
    breaker.record(probes[1], "still down")
    assert breaker.state == "open"  # one failed probe: open again, for another cool-down
    assert breaker.status().last_error == "still down"


# Bulkhead and the gateway's own bound.


def in_background(gw: GatewayServer, path: str) -> tuple[threading.Thread, list[int]]:
    statuses: list[int] = []

    def call() -> None:
        with httpx.Client(base_url=gw.base, timeout=30) as http:
            statuses.append(http.get(path).status_code)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, statuses


def wait_for(condition: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_a_full_bulkhead_answers_503_at_once(gateway: Gateway, backend: FaultProxy) -> None:
    gw = gateway(
        timeout=5.0,
        default={"bulkhead": {"max_concurrent": 2, "max_waiting": 1, "max_wait_seconds": 0.2}},
    )
    gw.http.get(f"{BILL}/EI-000001")
    backend.inject("delay", delay=1.0, paths=("/api/",))
    before = backend.calls()
    slow = [in_background(gw, f"{BILL}/EI-00000{n}") for n in (2, 3)]
    wait_for(lambda: backend.calls() - before == 2)
    waiter = in_background(gw, f"{BILL}/EI-000004")  # waits 0.2 s for a slot, then 503
    wait_for(lambda: gw.guard.bulkhead.waiting == 1)
    started = time.monotonic()
    response = gw.http.get(f"{BILL}/EI-000005")  # nobody else may wait: 503 at once
    assert time.monotonic() - started < 0.25  # at once: the others wait 1 s
    body = error(response, 503)
    assert body["code"] == "BACKEND_BUSY" and "'enterprise'" in body["message"]
    assert response.headers["Retry-After"] == "1"
    waiter[0].join()
    assert waiter[1] == [503]
    for thread, statuses in slow:
        thread.join()
        assert statuses == [200]
    assert backend.calls() - before == 2
    assert gw.guard.breaker.state == "closed"  # a busy back end is not a failing one


def test_requests_in_flight_in_the_gateway_are_bounded(
    gateway: Gateway, backend: FaultProxy
) -> None:
    gw = gateway(timeout=5.0, max_requests_in_flight=2)
    gw.http.get(f"{BILL}/EI-000001")
    backend.inject("delay", delay=1.0, paths=("/api/",))
    before = backend.calls()
    slow = [in_background(gw, f"{BILL}/EI-00000{n}") for n in (2, 3)]
    wait_for(lambda: backend.calls() - before == 2)
    started = time.monotonic()
    response = gw.http.get(f"{BILL}/EI-000004")
    assert time.monotonic() - started < 0.25  # at once: the others wait 1 s
    assert error(response, 503)["code"] == "GATEWAY_BUSY"
    assert response.headers["Retry-After"] == "1"
    assert gw.http.get("/health").status_code == 200  # probes are not API requests
    for thread, statuses in slow:
        thread.join()
        assert statuses == [200]


# Single flight and cache.


def test_identical_concurrent_gets_make_one_back_end_call(
    gateway: Gateway, backend: FaultProxy
) -> None:
    gw = gateway()
    gw.http.get(f"{BILL}/EI-000001")
    backend.inject("delay", delay=0.3, paths=("/api/",))
    path = f"{BILL}/EI-000007"

    async def fifty() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.base, timeout=10) as http:
            return await asyncio.gather(*(http.get(path) for _ in range(50)))

    answers = asyncio.run(fifty())
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert backend.requests["/api/v1/invoices/EI-000007"] <= 2


def test_cache_hits_misses_and_invalidation_by_patch(gateway: Gateway, backend: FaultProxy) -> None:
    gw = gateway()
    http = gw.http
    first = http.get(f"{BILL}/EI-000012")
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    calls = backend.calls()
    again = http.get(f"{BILL}/EI-000012?fields=state")
    assert again.headers["X-Cache"] == "hit" and int(again.headers["Age"]) >= 0
    assert again.json() == {
        "id": "EI-000012",
        "href": first.json()["href"],
        "@type": "CustomerBill",
        "state": "new",
    }
    listed = http.get(f"{BILL}?state=new&limit=5")
    assert listed.headers["X-Cache"] == "miss"
    assert http.get(f"{BILL}?limit=5&state=new").headers["X-Cache"] == "hit"
    assert http.get(f"{BILL}?state=new&limit=6").headers["X-Cache"] == "miss"  # another page
    assert backend.calls() == calls + 2

    patched = http.patch(
        f"{BILL}/EI-000012",
        json={"state": "onHold"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200 and patched.json()["state"] == "onHold"
    fresh = http.get(f"{BILL}/EI-000012")
    assert fresh.headers["X-Cache"] == "miss" and fresh.json()["state"] == "onHold"
    relisted = http.get(f"{BILL}?state=new&limit=5")
    assert relisted.headers["X-Cache"] == "miss"
    assert "EI-000012" not in [b["id"] for b in relisted.json()]
    # What others change shows once the TTL has passed (or the change detector saw it).
    backend.data.invoices["EI-000012"]["status"] = "APPROVED"  # type: ignore[attr-defined]
    assert http.get(f"{BILL}/EI-000012").json()["state"] == "onHold"
    gw.app.state.services.customer_bills.forget("EI-000012")  # what the detector does
    assert http.get(f"{BILL}/EI-000012").json()["state"] == "validated"


def test_a_404_is_not_cached(gateway: Gateway, backend: FaultProxy) -> None:
    gw = gateway()
    assert gw.http.get(f"{BILL}/EI-000999").status_code == 404
    calls = backend.calls()
    assert gw.http.get(f"{BILL}/EI-000999").status_code == 404
    assert backend.calls() == calls + 1


def test_stale_answers_while_the_back_end_is_down(gateway: Gateway, backend: FaultProxy) -> None:
    gw = gateway(
        cache={"ttl_seconds": {"customerBill": 0.2}, "stale_if_error_seconds": 60},
        default={"breaker": {"cool_down_seconds": 30}},
    )
    fresh = gw.http.get(f"{BILL}/EI-000021")
    assert fresh.headers["X-Cache"] == "miss"
    time.sleep(0.3)
    backend.inject("refuse")
    stale = gw.http.get(f"{BILL}/EI-000021")
    assert stale.status_code == 200 and stale.headers["X-Cache"] == "stale"
    assert stale.json() == fresh.json() and int(stale.headers["Age"]) == 0
    # Older than its freshness lifetime: a client's cache must not reuse it unchecked.
    assert stale.headers["Cache-Control"] == "private, max-age=0"
    assert stale.headers["ETag"] == fresh.headers["ETag"]
    error(gw.http.get(f"{BILL}/EI-000022"), 503)  # never read: nothing to fall back on
    while gw.guard.breaker.state != "open":
        gw.http.get(f"{BILL}/EI-000023")
    again = gw.http.get(f"{BILL}/EI-000021")  # the breaker is open: stale, at once
    assert again.status_code == 200 and again.headers["X-Cache"] == "stale"


def test_the_cache_is_bounded_by_entries_and_bytes() -> None:
    async def fill(cache: ReadCache, count: int, size: int) -> None:
        with request_scope() as scope:
            for n in range(count):
                key = ("b", "customerBill", "get", str(n), "")

                async def load(n: int = n) -> dict[str, str]:
                    return {"id": str(n), "pad": "x" * size}

                await cache.read(key, load, scope)

    by_entries = ReadCache(CacheSettings(max_entries=3))
    asyncio.run(fill(by_entries, 10, 10))
    assert len(by_entries) == 3
    by_bytes = ReadCache(CacheSettings(max_bytes=5000))
    asyncio.run(fill(by_bytes, 10, 1000))
    assert len(by_bytes) == 3 and by_bytes.bytes <= 5000


def test_a_query_key_ignores_the_order_of_filters_and_values() -> None:
    a = Filter("state", "eq", ("new", "sent"), "state")
    b = Filter("billingAccount.id", "eq", ("A1",), "data scope")
    one = query_key(Query(filters=(a, b), limit=5))
    two = query_key(Query(filters=(b, Filter("state", "eq", ("sent", "new"), "state")), limit=5))
    assert one == two
    assert one != query_key(Query(filters=(a,), limit=5))  # another caller scope
    assert one != query_key(Query(filters=(a, b), limit=5, offset=5))
    assert one == query_key(Query(filters=(a, b), limit=5, fields=("id",)))


# Health and readiness.


def test_health_and_readiness(gateway: Gateway, backend: FaultProxy) -> None:
    gw = gateway(default={"breaker": {"cool_down_seconds": 0.5}})
    health = gw.http.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "up"}
    ready = gw.http.get("/ready")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["store"]["status"] == "up"
    assert body["backends"]["enterprise"]["state"] == "closed"
    assert body["backends"]["enterprise"]["serves"] == [
        "customerBill",
        "appliedCustomerBillingRate",
        "billCycle",
    ]

    break_it(gw, backend)
    down = gw.http.get("/ready")
    assert down.status_code == 503
    enterprise = down.json()["backends"]["enterprise"]
    assert enterprise["state"] == "open"
    # Readiness needs no token: it tells the kind of failure, not the back end's own text.
    assert enterprise["lastError"] in ("unavailable (503)", "no answer in time (504)")
    assert "127.0.0.1" not in down.text
    assert gw.http.get("/health").status_code == 200

    backend.heal()
    time.sleep(0.55)
    assert gw.http.get("/ready").json()["backends"]["enterprise"]["state"] == "half-open"
    for n in range(3):
        gw.http.get(f"{BILL}/EI-00003{n}")
    assert gw.http.get("/ready").status_code == 200


def test_health_and_readiness_need_no_token(
    backend: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENTERPRISE_URL", backend.base)
    monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": []}))
    config = configured(ROOT / "config" / "rest.yaml", 1.0, {})
    auth = config.auth.model_copy(
        update={"enabled": True, "issuer": "https://idp.test", "jwks_file": jwks}
    )
    with GatewayServer(config.model_copy(update={"auth": auth})) as gw:
        assert gw.http.get(f"{BILL}/EI-000001").status_code == 401
        assert gw.http.get("/health").status_code == 200
        assert gw.http.get("/ready").status_code == 200


# Federation with a back end down.

FEDERATED = """
backends:
  legacy_billing: {{kind: sql, url: "sqlite+aiosqlite:///{db}"}}
  enterprise:
    kind: rest
    base_url: {rest}
    timeout_seconds: 1
    auth: {{type: oauth2_client_credentials, token_url: /oauth/token,
           client_id: gateway, client_secret: s3cret}}
resources:
  customerBill:
    - {{backend: legacy_billing, mapping: {root}/mappings/legacy_sql/customer_bill.yaml,
       id_prefix: "L-", accounts: "^BA-"}}
    - {{backend: enterprise, mapping: {root}/mappings/enterprise_rest/customer_bill.yaml,
       id_prefix: "E-", accounts: "^ENT-"}}
store:
  url: sqlite+aiosqlite:///{store}
"""


@pytest.mark.parametrize("mode", ["fail_fast", "partial"])
def test_a_federated_list_with_a_back_end_down(
    backend: FaultProxy, demo_db: Path, tmp_path: Path, mode: str
) -> None:
    path = tmp_path / "federated.yaml"
    store = tmp_path / "store.sqlite"
    path.write_text(FEDERATED.format(db=demo_db, rest=backend.base, root=ROOT, store=store))
    config = configured(path, 1.0, {"federation": mode})
    with GatewayServer(config) as gw:
        whole = gw.http.get(f"{BILL}?limit=1")
        assert int(whole.headers["X-Total-Count"]) == 300 + len(invoice_ids(backend))
        backend.inject("refuse")
        response = gw.http.get(f"{BILL}?limit=1000")
        if mode == "fail_fast":
            body = error(response, 503)
            assert "'enterprise'" in body["message"]
            assert "X-Partial-Result" not in response.headers
        else:
            assert response.status_code == 200
            assert response.headers["X-Partial-Result"] == "left out enterprise"
            assert response.headers["X-Total-Count"] == "300"
            assert {b["id"][:2] for b in response.json()} == {"L-"}
        # A list that only the down back end can answer fails either way.
        alone = gw.http.get(f"{BILL}?billingAccount.id=ENT-0001")
        assert error(alone, 503)
        assert gw.http.get(f"{BILL}/L-1").status_code == 200


def test_a_back_end_policy_changes_only_the_keys_it_gives() -> None:
    settings = ResilienceSettings.model_validate(
        {
            "default": {"retry": {"attempts": 2}, "breaker": {"cool_down_seconds": 9}},
            "backends": {"slow": {"breaker": {"half_open_probes": 1}}},
        }
    )
    slow = settings.policy("slow")
    assert slow.breaker.half_open_probes == 1
    assert slow.breaker.cool_down_seconds == 9 and slow.retry.attempts == 2
    assert settings.policy("other") == settings.default


# Memory after a burst.


def test_memory_is_cleaned_up_once_idle_after_a_burst_only() -> None:
    async def scenario() -> tuple[int, int]:
        recovery = BurstRecovery(burst=64, quiet_seconds=0.05)
        recovery.idle(peak=10)  # a quiet spell: nothing to clean
        await asyncio.sleep(0.1)
        quiet = recovery.cleanups
        recovery.idle(peak=300)
        recovery.idle(peak=300)  # once per burst, however often it is told
        await asyncio.sleep(0.2)
        return quiet, recovery.cleanups

    assert asyncio.run(scenario()) == (0, 1)
