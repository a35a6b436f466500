"""`GET /metrics`: requests by route template, back-end attempts, cache, breakers, store."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from gateway.__main__ import exposure_refusal
from gateway.app import create_app
from gateway.auth import AuthSettings
from gateway.cache import ReadCache
from gateway.config import GatewayConfig, MetricsSettings, load_config
from gateway.metrics import StoreReader
from gateway.store import GatewayStore, OperationsFigures, OutboxEvent, operations_figures
from tests.conftest import API, ROOT, gateway_config, tuned
from tests.tokens import ISSUER, Signer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(exposition: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


@pytest.fixture
def gateway(demo_db: Path, tmp_path: Path) -> Iterator[TestClient]:
    config = gateway_config(demo_db, tmp_path / "store.sqlite")
    with TestClient(create_app(config)) as client:
        yield client


BILL = f"{API}/customerBill/{{id}}"


def test_requests_are_counted_by_route_template_method_and_status(gateway: TestClient) -> None:
    for ident in ("1", "2", "3", "no-such-bill"):
        gateway.get(f"{API}/customerBill/{ident}")
    gateway.get("/no/such/path/42")
    gateway.post(f"{API}/customerBill", json={})  # 405: the route is known, not the method
    samples = scrape(gateway)
    count = "tmf678_http_request_duration_seconds_count"
    assert value(samples, count, route=BILL, method="GET", status="200") == 3
    assert value(samples, count, route=BILL, method="GET", status="404") == 1
    assert value(samples, count, route="<unmatched>", method="GET", status="404") == 1
    assert value(samples, count, route=f"{API}/customerBill", method="POST", status="405") == 1
    routes = {s["route"] for s in series(samples, count)}
    assert not any(r.endswith(("/1", "/2", "/42", "no-such-bill")) for r in routes)  # no ids
    buckets = series(samples, "tmf678_http_request_duration_seconds_bucket")
    assert {"route": BILL, "method": "GET", "status": "200", "le": "+Inf"} in buckets


def test_odd_methods_share_one_label(gateway: TestClient) -> None:
    gateway.request("PROPFIND", f"{API}/customerBill")
    samples = scrape(gateway)
    methods = {s["method"] for s in series(samples, "tmf678_http_request_duration_seconds_count")}
    assert "PROPFIND" not in methods and "OTHER" in methods


def test_backend_reads_cache_breakers_and_store_are_exposed(gateway: TestClient) -> None:
    gateway.get(f"{API}/customerBill?limit=5")
    gateway.get(f"{API}/customerBill?limit=5")  # the same read again: from the cache
    gateway.get(f"{API}/customerBill/7")
    samples = scrape(gateway)
    calls = "tmf678_backend_call_duration_seconds_count"
    backend = "legacy_billing"
    assert value(samples, calls, backend=backend, operation="list", outcome="ok") == 1
    assert value(samples, calls, backend=backend, operation="get", outcome="ok") == 1
    assert value(samples, "tmf678_backend_breaker_state", backend=backend, state="closed") == 1
    assert value(samples, "tmf678_backend_breaker_state", backend=backend, state="open") == 0
    assert value(samples, "tmf678_backend_calls_in_flight", backend=backend) == 0
    assert value(samples, "tmf678_cache_entries") == 2
    assert (value(samples, "tmf678_cache_bytes") or 0) > 0
    if hasattr(ReadCache, "stats"):  # the cache's own counters, where it keeps them
        assert value(samples, "tmf678_cache_hits_total") == 1
        assert value(samples, "tmf678_cache_misses_total") == 2
    assert value(samples, "tmf678_store_metrics_up") == 1
    assert value(samples, "tmf678_outbox_pending_events") == 0
    assert value(samples, "tmf678_outbox_dead_events") == 0
    assert value(samples, "tmf678_on_demand_queue_depth") == 0


def test_on_demand_requests_show_in_the_queue(demo_db: Path, tmp_path: Path) -> None:
    # The worker holds each request a while after making its bill: it stays queued.
    config = gateway_config(demo_db, tmp_path / "store.sqlite", events=None)
    config = tuned(config, worker={"pause_after_action_seconds": 30})
    with TestClient(create_app(config)) as client:
        body = {"billingAccount": {"id": "BA-000003", "@type": "BillingAccountRef"}}
        made = client.post(f"{API}/customerBillOnDemand", json=body)
        assert made.status_code == 201, made.text
        samples = scrape(client)
    assert value(samples, "tmf678_on_demand_queue_depth") == 1
    assert value(samples, "tmf678_on_demand_requests", state="inProgress") == 1


def failing_rest_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GatewayConfig:
    monkeypatch.setenv("ENTERPRISE_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("GATEWAY_STORE", str(tmp_path / "store.sqlite"))
    config = load_config(ROOT / "config" / "rest.yaml")
    resilience = config.resilience.model_copy(
        update={
            "default": config.resilience.default.model_copy(
                update={
                    "retry": config.resilience.default.retry.model_copy(
                        update={"attempts": 2, "base_seconds": 0.001, "max_seconds": 0.002}
                    ),
                    "breaker": config.resilience.default.breaker.model_copy(
                        update={"consecutive_failures": 2, "cool_down_seconds": 60}
                    ),
                }
            )
        }
    )
    return config.model_copy(update={"resilience": resilience, "on_demand": None, "events": None})


def test_failed_attempts_and_the_open_breaker_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(failing_rest_config(tmp_path, monkeypatch))) as client:
        first = client.get(f"{API}/customerBill?limit=1")
        second = client.get(f"{API}/customerBill?limit=2")
        samples = scrape(client)
    assert first.status_code in (502, 503, 504) and second.status_code == 503
    calls = "tmf678_backend_call_duration_seconds_count"
    outcomes = {
        s["outcome"]: value(samples, calls, **s)
        for s in series(samples, calls)
        if s["backend"] == "enterprise"
    }
    assert sum(v or 0 for k, v in outcomes.items() if k != "breaker_open") == 2  # 2 attempts
    assert outcomes.get("breaker_open") == 1  # the second read: refused at once
    state = "tmf678_backend_breaker_state"
    assert value(samples, state, backend="enterprise", state="open") == 1
    assert value(samples, state, backend="enterprise", state="closed") == 0


# The store's figures, on SQLite and on PostgreSQL.

POSTGRES_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
HOW_TO_ENABLE = (
    "PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres, trust authentication);"
    " start it to run the metrics' store figures on PostgreSQL too"
)


async def _admin(statement: str) -> None:
    engine = create_async_engine(
        f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT", connect_args={"timeout": 5}
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite'}"
        return
    name = f"gateway_metrics_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, SQLAlchemyError, TimeoutError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{HOW_TO_ENABLE} (CI=true: required): {exc}")
        pytest.skip(f"{HOW_TO_ENABLE}: {exc}")
    yield f"{POSTGRES_SERVER}/{name}"
    asyncio.run(_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_store_figures_count_the_queues(store_url: str) -> None:
    async def scenario() -> tuple[OperationsFigures, OperationsFigures, float]:
        store = GatewayStore(store_url)
        await store.open()
        try:
            empty = await operations_figures(store)
            hub = await store.add_hub("http://listener.example/cb", None)
            before = time.time()
            events = [
                OutboxEvent(str(uuid.uuid4()), hub, "http://listener.example/cb", "E", "{}")
                for _ in range(4)
            ]
            async with store.transaction() as conn:
                await store.enqueue_events(conn, events)
                for account in ("A", "B", "C"):
                    await store.create_on_demand(
                        conn,
                        backend="legacy_billing",
                        account_id=account,
                        account_name=None,
                        name=None,
                        description=None,
                        related_party=None,
                    )
            claimed = await store.claim_events(hub, 60, 2)
            await store.settle_events([claimed[0].seq], [], [(claimed[1].seq, "gone")])
            return empty, await operations_figures(store), before
        finally:
            await store.close()

    empty, figures, before = asyncio.run(scenario())
    assert empty == OperationsFigures(0, None, 0, {})
    assert figures.outbox_pending == 2 and figures.outbox_dead == 1
    assert figures.outbox_oldest_pending is not None
    assert before - 1 <= figures.outbox_oldest_pending <= time.time()
    assert figures.on_demand_by_state == {"inProgress": 3}


def test_the_store_is_read_at_most_once_per_ttl_and_never_waited_on_long() -> None:
    now = [0.0]
    reads: list[float] = []
    figures = OperationsFigures(5, time.time() - 30, 2, {"inProgress": 1, "done": 4})

    async def read() -> OperationsFigures:
        reads.append(now[0])
        return figures

    async def scenario() -> tuple[Samples, Samples, Samples]:
        reader = StoreReader(read, ttl=5, timeout=0.05, clock=lambda: now[0])
        await reader.refresh()
        await asyncio.gather(reader.refresh(), reader.refresh())
        first = _collected(reader)
        now[0] = 6.0
        await reader.refresh()
        second = _collected(reader)

        async def hangs() -> OperationsFigures:
            await asyncio.sleep(10)
            raise AssertionError("not reached")

        stuck = StoreReader(hangs, timeout=0.05)
        started = time.monotonic()
        await stuck.refresh()
        assert time.monotonic() - started < 1
        return first, second, _collected(stuck)

    first, second, stuck = asyncio.run(scenario())
    assert reads == [0.0, 6.0]
    assert value(first, "tmf678_outbox_pending_events") == 5
    assert 29 <= (value(first, "tmf678_outbox_oldest_pending_age_seconds") or 0) < 60
    assert value(first, "tmf678_outbox_dead_events") == 2
    assert value(first, "tmf678_on_demand_requests", state="done") == 4
    assert value(first, "tmf678_on_demand_queue_depth") == 1
    assert value(second, "tmf678_store_metrics_up") == 1
    assert value(stuck, "tmf678_store_metrics_up") == 0
    assert value(stuck, "tmf678_outbox_pending_events") is None  # no stale figures shown


def _collected(reader: StoreReader) -> Samples:
    found: Samples = {}
    for family in reader.collect():
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


# Who may scrape.


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()), "ES256", "metrics-test")


def secured(config: GatewayConfig, signer: Signer, jwks: Path, scope: str | None) -> Any:
    jwks.write_text(json.dumps({"keys": [signer.jwk]}))
    auth = AuthSettings(enabled=True, issuer=ISSUER, jwks_file=jwks)
    return config.model_copy(update={"auth": auth, "metrics": MetricsSettings(scope=scope)})


def test_a_metrics_scope_asks_scrapers_for_a_token(
    demo_db: Path, tmp_path: Path, signer: Signer
) -> None:
    config = gateway_config(demo_db, tmp_path / "store.sqlite", events=None, on_demand=None)
    secure = secured(config, signer, tmp_path / "jwks.json", "tmf678:metrics")
    with TestClient(create_app(secure)) as client:
        assert client.get("/metrics").status_code == 401
        reader = signer.token(scope="tmf678:read")
        assert (
            client.get("/metrics", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
        )
        scraper = signer.token(scope="tmf678:metrics")
        scrape(client, Authorization=f"Bearer {scraper}")
        assert client.get("/health").status_code == 200  # probes stay tokenless


def test_metrics_off_is_not_served(demo_db: Path, tmp_path: Path) -> None:
    config = gateway_config(demo_db, tmp_path / "store.sqlite", events=None, on_demand=None)
    config = config.model_copy(update={"metrics": MetricsSettings(enabled=False)})
    with TestClient(create_app(config)) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get(f"{API}/billCycle?limit=1").status_code == 200


def test_tokenless_metrics_beyond_loopback_must_be_asked_for(
    demo_db: Path, tmp_path: Path, signer: Signer
) -> None:
    config = gateway_config(demo_db, public_base_url="https://billing.example.com")
    open_metrics = secured(config, signer, tmp_path / "jwks.json", None)
    assert exposure_refusal(open_metrics, "127.0.0.1") is None
    refusal = exposure_refusal(open_metrics, "0.0.0.0")
    assert refusal is not None and "metrics.scope" in refusal
    scoped = secured(config, signer, tmp_path / "jwks.json", "tmf678:metrics")
    assert exposure_refusal(scoped, "0.0.0.0") is None
    said = open_metrics.model_copy(update={"metrics": MetricsSettings(open_beyond_loopback=True)})
    assert exposure_refusal(said, "0.0.0.0") is None
    off = open_metrics.model_copy(update={"metrics": MetricsSettings(enabled=False)})
    assert exposure_refusal(off, "0.0.0.0") is None


def test_openmetrics_is_served_to_scrapers_that_ask(gateway: TestClient) -> None:
    gateway.get(f"{API}/billCycle?limit=1")
    response = gateway.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_workers_serve_one_port_and_their_counts_are_summed(demo_db: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "LEGACY_DB": str(demo_db),
        "GATEWAY_STORE": str(tmp_path / "store.sqlite"),
        "PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the workers did not start"
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=10) as client:
            for ident in range(1, 13):
                assert client.get(f"{API}/customerBill/{ident}").status_code == 200
            # Each scrape reaches one worker (on a new connection); each sees every count.
            pids = set()
            for _ in range(6):
                with httpx.Client(base_url=base, timeout=10) as fresh:
                    samples = parse(fresh.get("/metrics").text)
                count = "tmf678_http_request_duration_seconds_count"
                assert value(samples, count, route=BILL, method="GET", status="200") == 12
                pids |= {s["pid"] for s in series(samples, "tmf678_backend_breaker_state")}
            assert pids  # the worker's own gauges say which worker answered
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert output.count('"event": "gateway_started"') == 2  # each worker opened its services
