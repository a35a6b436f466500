"""What authentication costs: `GET /customerBill/{id}` with a bearer token beside anonymous.

Starts two gateways on loopback over the demo database: the default configuration
(anonymous) and config/secure.yaml with a development key made for this run. Each is
driven by the same concurrent load of GETs by id (one token per client, as a channel
app sends it), alternately twice, and the throughputs and their ratio are printed.
One run, this machine; not a test.

    python bench/auth_overhead.py [--requests 3000] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def start(config: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", config, "--log-level", "WARNING"],
        env={**os.environ, **env, "PORT": str(port)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}{API}"
    for _ in range(200):
        try:
            httpx.get(f"{base}/billCycle?limit=1", timeout=1)
            return process, base
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"gateway with {config} did not start")


async def load(base: str, headers: dict[str, str], requests: int, concurrency: int) -> float:
    """Requests per second of GETs by id from `concurrency` clients."""
    per_client = requests // concurrency

    async def client(number: int) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(headers=headers, limits=limits) as http:
            for i in range(per_client):
                reply = await http.get(f"{base}/customerBill/{1 + (number * 7 + i) % 300}")
                if reply.status_code != 200:
                    raise SystemExit(f"unexpected {reply.status_code}: {reply.text[:200]}")

    await asyncio.gather(*(client(n) for n in range(concurrency)))  # warm-up, connections
    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(concurrency)))
    return per_client * concurrency / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    db = ROOT / "var" / "legacy_billing.sqlite"
    ensure_demo_database(str(db))
    with tempfile.TemporaryDirectory() as tmp:
        issuer = "http://127.0.0.1/bench-issuer"
        token = subprocess.run(
            [sys.executable, "-m", "gateway", "token", "--dir", tmp, "--issuer", issuer]
            + ["--scope", "tmf678:read tmf678:all-accounts", "--ttl", "3600"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        common = {"LEGACY_DB": str(db), "GATEWAY_STORE": f"{tmp}/store.sqlite"}
        secure_env = {**common, "AUTH_JWKS_FILE": f"{tmp}/dev-jwks.json", "AUTH_ISSUER": issuer}
        anonymous, anonymous_base = start("config/default.yaml", common)
        secure, secure_base = start("config/secure.yaml", secure_env)
        try:
            rates: dict[str, list[float]] = {"anonymous": [], "bearer token": []}
            for _ in range(2):  # alternate, so neither gets the quieter moment
                rates["anonymous"].append(
                    asyncio.run(load(anonymous_base, {}, args.requests, args.concurrency))
                )
                bearer = {"Authorization": f"Bearer {token}"}
                rates["bearer token"].append(
                    asyncio.run(load(secure_base, bearer, args.requests, args.concurrency))
                )
        finally:
            for process in (anonymous, secure):
                process.terminate()
                process.wait(timeout=10)
    print(
        f"GET /customerBill/{{id}}: {args.requests} requests x 2 rounds per mode, "
        f"{args.concurrency} concurrent clients, loopback, one run"
    )
    best = {mode: max(values) for mode, values in rates.items()}
    for mode, values in rates.items():
        shown = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  {mode:13s} req/s: {shown} (best {best[mode]:,.0f})")
    ratio = best["bearer token"] / best["anonymous"]
    print(f"  authenticated / anonymous: {ratio:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
