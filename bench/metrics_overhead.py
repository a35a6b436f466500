"""What metrics cost a request: `GET /customerBill/{id}` with `/metrics` on beside off.

Two measures, side by side in one run:

1. Throughput: two gateways on loopback over the demo database, the default
   configuration with metrics on and the same with `metrics.enabled: false`, driven by
   the same concurrent GETs by id, alternately (rounds), best of each printed with the
   ratio. On a shared 2-core machine this is noisy.
2. Instructions (with `--callgrind`, valgrind installed): the same requests run through
   the ASGI application in-process under callgrind, K and 2K requests per mode; the
   difference over K is the instructions one request costs, so start-up cancels out.
   This ratio is the one to trust.

    python bench/metrics_overhead.py [--requests 3000] [--rounds 3] [--callgrind]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
API = "/tmf-api/customerBillManagement/v5"
sys.path.insert(0, str(ROOT))

from simulators.billing_db import ensure_demo_database  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def configs(cached: bool = True) -> dict[str, Path]:
    """The default configuration, and the same with metrics off (under var/: same paths).

    Without `cached`, the read cache is off: each request reads the back end, so the
    in-process runs do the same work whatever the time (valgrind is slow; TTLs are not).
    """
    default = (ROOT / "config" / "default.yaml").read_text()
    if not cached:
        default, changed = re.subn(r"(\n  cache:[^\n]*\n    enabled:) true", r"\1 false", default)
        assert changed == 1, "config/default.yaml: resilience.cache.enabled not found"
    found: dict[str, Path] = {}
    for mode, extra in (("metrics on", ""), ("metrics off", "\nmetrics:\n  enabled: false\n")):
        path = ROOT / "var" / f"bench-{mode.replace(' ', '-')}-{cached}-{os.getpid()}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(default + extra)
        found[mode] = path
    return found


def start(config: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "--log-level", "WARNING"],
        env={**os.environ, **env, "PORT": str(port)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}{API}"
    for _ in range(400):
        try:
            httpx.get(f"{base}/billCycle?limit=1", timeout=1)
            return process, base
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"gateway with {config} did not start")


async def load(base: str, requests: int, concurrency: int) -> float:
    """Requests per second of GETs by id from `concurrency` clients."""
    per_client = requests // concurrency

    async def client(number: int) -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as http:
            for i in range(per_client):
                reply = await http.get(f"{base}/customerBill/{1 + (number * 7 + i) % 300}")
                if reply.status_code != 200:
                    raise SystemExit(f"unexpected {reply.status_code}: {reply.text[:200]}")

    await asyncio.gather(*(client(n) for n in range(concurrency)))  # warm-up, connections
    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(concurrency)))
    return per_client * concurrency / (time.perf_counter() - started)


async def in_process(config_path: Path, requests: int) -> None:
    """`requests` GETs by id straight through the ASGI application (no sockets)."""
    from contextlib import AsyncExitStack

    from gateway.app import build_app, gateway_metrics, open_services
    from gateway.config import load_config

    # No background work (event delivery, change detection, the on-demand worker): under
    # valgrind its polls would add instructions in proportion to the (slow) run time.
    config = load_config(config_path).model_copy(update={"events": None, "on_demand": None})
    metrics = gateway_metrics(config)
    async with AsyncExitStack() as stack:
        services = await open_services(config, stack, f"http://bench{API}", metrics)
        app = build_app(config, services, metrics)
        gc.collect()
        gc.freeze()  # as the server does after start-up: no old-generation pauses counted
        for i in range(requests):
            path = f"{API}/customerBill/{1 + i % 300}"
            scope: dict[str, Any] = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": [(b"host", b"bench")],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 80),
            }
            statuses: list[int] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any], seen: list[int] = statuses) -> None:
                if message["type"] == "http.response.start":
                    seen.append(message["status"])

            await app(scope, receive, send)
            if statuses != [200]:
                raise SystemExit(f"unexpected {statuses}")


def metric_work_seconds(repeat: int = 200_000) -> float:
    """Seconds the per-request metric calls take: one request and one back-end attempt."""
    import timeit

    from starlette.routing import Route

    from gateway.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    observe = metrics.backend_observer("legacy_billing")
    route = Route(f"{API}/customerBill/{{id}}", lambda request: None)
    scope = {"route": route, "method": "GET"}

    def one_request() -> None:
        metrics.observe_request(scope, 200, 0.004)
        observe("get", "ok", 0.002)

    return min(timeit.repeat(one_request, number=repeat, repeat=5)) / repeat


def instructions(config: Path, requests: int, env: dict[str, str]) -> int:
    """Instructions callgrind counts for a run of `requests` in-process requests."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out"]
            + [sys.executable, __file__, "--in-process", str(config), str(requests)],
            env={**os.environ, **env},
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        summary = re.search(r"^(?:summary|totals): (\d+)", Path(f"{out}/cg.out").read_text(), re.M)
        if summary is None:
            raise SystemExit("no callgrind summary")
        return int(summary.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callgrind", type=int, default=0, metavar="K", help="requests (0: off)")
    parser.add_argument("--in-process", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    db = ROOT / "var" / "legacy_billing.sqlite"
    if args.in_process:
        from gateway.logs import configure_logging

        configure_logging("WARNING")
        asyncio.run(in_process(Path(args.in_process[0]), int(args.in_process[1])))
        return
    ensure_demo_database(str(db))
    with tempfile.TemporaryDirectory() as tmp:
        paths = configs()
        uncached = configs(cached=False)
        env = {"LEGACY_DB": str(db), "GATEWAY_STORE": f"{tmp}/store.sqlite"}
        try:
            rates: dict[str, list[float]] = {mode: [] for mode in paths}
            servers = {mode: start(path, env) for mode, path in paths.items() if args.rounds}
            try:
                for _ in range(args.rounds):  # alternate, so neither gets the quieter moment
                    for mode, (_, base) in servers.items():
                        rate = asyncio.run(load(base, args.requests, args.concurrency))
                        rates[mode].append(rate)
            finally:
                for process, _ in servers.values():
                    process.terminate()
                    process.wait(timeout=10)
            counts: dict[str, float] = {}
            if args.callgrind and shutil.which("valgrind"):
                k = args.callgrind
                for mode, path in uncached.items():
                    counts[mode] = (instructions(path, 2 * k, env) - instructions(path, k, env)) / k
        finally:
            for path in [*paths.values(), *uncached.values()]:
                path.unlink(missing_ok=True)
    print(
        f"GET /customerBill/{{id}}: {args.requests} requests x {args.rounds} rounds per mode, "
        f"{args.concurrency} concurrent clients, loopback, one run"
    )
    if args.rounds:
        best = {mode: max(values) for mode, values in rates.items()}
        for mode, values in rates.items():
            shown = ", ".join(f"{v:,.0f}" for v in values)
            print(f"  {mode:12s} req/s: {shown} (best {best[mode]:,.0f})")
        print(f"  metrics on / off throughput: {best['metrics on'] / best['metrics off']:.3f}")
    print(f"  metric calls per request (timeit, in-process): {metric_work_seconds() * 1e6:.2f} µs")
    if counts:
        on, off = counts["metrics on"], counts["metrics off"]
        print(f"  instructions per uncached request (callgrind, in-process, {args.callgrind}):")
        print(f"    metrics on {on:,.0f}, off {off:,.0f}: extra {on - off:,.0f} ({on / off:.3f}x)")


if __name__ == "__main__":
    main()
