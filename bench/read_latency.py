"""Read latency of the gateway over a large legacy database, beside the database itself.

Starts `python -m gateway` on loopback over the generated benchmark database (see
`make bench-db`), sends a bounded number of sequential requests per scenario, and
prints p50/p95 latency, the same query's time straight against SQLite, their ratio,
and the gateway process's peak memory. One run, this machine; not a test.

    python bench/read_latency.py --db var/bench_billing.sqlite [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
API = "/tmf-api/customerBillManagement/v5"
STATES = {"new": "N", "onHold": "H", "validated": "V", "sent": "S", "settled": "C"}
STATES["partiallyPaid"] = "P"
BILL_COLUMNS = "*"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(call: Callable[[int], None], requests: int, warmup: int = 20) -> list[float]:
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(requests):
        started = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


# The HTTP floor: a bare Starlette app on the same server, answering a fixed body of the
# same size as the gateway's 20-bill page, so the table shows what the gateway itself adds.
BARE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
body = open(sys.argv[2], "rb").read()
async def fixed(request):
    return Response(body, media_type="application/json")
app = Starlette(routes=[Route("/fixed", fixed)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def start_bare(body: bytes, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    path = tmp / "bare_body.json"
    path.write_bytes(body)
    process = subprocess.Popen(
        [sys.executable, "-c", BARE_APP, str(port), str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    return process, f"http://127.0.0.1:{port}/fixed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=str(ROOT / "var" / "bench_billing.sqlite"))
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    db = Path(args.db).resolve()
    if not db.exists():
        print(f"no benchmark database at {db}: run `make bench-db` first", file=sys.stderr)
        return 2

    direct = sqlite3.connect(db)
    bills = direct.execute("SELECT count(*) FROM INV_HDR").fetchone()[0]
    rng = random.Random(678)
    pairs = direct.execute(
        "SELECT ACCT_NO, STAT_CD FROM INV_HDR WHERE INV_ID % 997 = 0 LIMIT 500"
    ).fetchall()
    code_to_state = {code: state for state, code in STATES.items()}
    rng.shuffle(pairs)
    amounts = [rng.choice([50, 100, 150, 200, 300]) for _ in range(64)]
    ids = [rng.randint(1, bills) for _ in range(64)]

    port = free_port()
    # The default configuration without events: the change detector's first pass over a
    # million bills would compete with the measurement.
    config = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    config.pop("events", None)
    bench_config = db.parent / "bench_gateway.yaml"
    bench_config.write_text(yaml.safe_dump(config).replace("../mappings/", f"{ROOT}/mappings/"))
    env = {
        **os.environ,
        "LEGACY_DB": str(db),
        "GATEWAY_STORE": str(db.parent / "bench_store.sqlite"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(bench_config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}{API}"
    client = httpx.Client(timeout=30)
    try:
        for _ in range(200):
            try:
                client.get(f"{base}/billCycle?limit=1")
                break
            except httpx.TransportError:
                time.sleep(0.1)

        def get(url: str) -> None:
            response = client.get(url)
            if response.status_code != 200:
                raise SystemExit(f"{url}: {response.status_code} {response.text[:200]}")

        def account_state(i: int) -> str:
            acct, code = pairs[i % len(pairs)]
            return (
                f"{base}/customerBill?billingAccount.id={acct}&state={code_to_state[code]}"
                "&sort=-billDate&limit=20"
            )

        def account_state_sql(i: int) -> None:
            acct, code = pairs[i % len(pairs)]
            direct.execute(
                "SELECT * FROM INV_HDR WHERE ACCT_NO = ? AND STAT_CD = ? "
                "ORDER BY INV_DT DESC, INV_ID LIMIT 20",
                (acct, code),
            ).fetchall()
            direct.execute(
                "SELECT count(*) FROM INV_HDR WHERE ACCT_NO = ? AND STAT_CD = ?", (acct, code)
            ).fetchone()

        def first_page_sql(i: int) -> None:
            rows = direct.execute("SELECT * FROM INV_HDR ORDER BY INV_ID LIMIT 100").fetchall()
            keys = [r[0] for r in rows]
            marks = ",".join("?" * len(keys))
            direct.execute(f"SELECT * FROM INV_TAX WHERE INV_ID IN ({marks})", keys).fetchall()
            direct.execute("SELECT count(*) FROM INV_HDR").fetchone()

        def amount_sql(i: int) -> None:
            cents = amounts[i % len(amounts)] * 100
            direct.execute(
                "SELECT * FROM INV_HDR WHERE GRS_AMT > ? ORDER BY INV_ID LIMIT 20", (cents,)
            ).fetchall()
            direct.execute("SELECT count(*) FROM INV_HDR WHERE GRS_AMT > ?", (cents,)).fetchone()

        def by_id_sql(i: int) -> None:
            direct.execute(
                "SELECT * FROM INV_HDR WHERE INV_ID = ?", (ids[i % len(ids)],)
            ).fetchall()
            direct.execute(
                "SELECT * FROM INV_TAX WHERE INV_ID = ?", (ids[i % len(ids)],)
            ).fetchall()

        scenarios = [
            (
                "customerBill?billingAccount.id=<a>&state=<s>&sort=-billDate&limit=20",
                lambda i: get(account_state(i)),
                account_state_sql,
                20,
            ),
            (
                "customerBill?limit=100",
                lambda i: get(f"{base}/customerBill?limit=100"),
                first_page_sql,
                30,
            ),
            (
                "customerBill?amountDue.value.gt=<x>&limit=20",
                lambda i: get(f"{base}/customerBill?amountDue.value.gt={amounts[i % 64]}&limit=20"),
                amount_sql,
                50,
            ),
            (
                "customerBill/<id>",
                lambda i: get(f"{base}/customerBill/{ids[i % 64]}"),
                by_id_sql,
                None,
            ),
        ]
        print(f"Benchmark database: {bills:,} bills ({db.stat().st_size / 2**20:,.0f} MiB)")
        print(f"{args.requests} sequential requests per scenario after 20 warm-up requests\n")
        print(
            "| request | gateway p50 ms | gateway p95 ms | target p50 | SQLite direct p50 ms "
            "| gateway / direct |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for name, call, sql, target in scenarios:
            gateway_ms = measure(call, args.requests)
            direct_ms = measure(sql, args.requests)
            p50, p95 = statistics.median(gateway_ms), percentile(gateway_ms, 0.95)
            d50 = statistics.median(direct_ms)
            goal = f"< {target} ms" if target else "-"
            print(
                f"| `GET /{name}` | {p50:.1f} | {p95:.1f} | {goal} | {d50:.2f} | {p50 / d50:.1f}x |"
            )
        print(f"\nGateway peak memory (VmHWM): {peak_rss_mb(gateway.pid):.0f} MB (target < 300 MB)")
        page = client.get(account_state(0)).content
        bare, bare_url = start_bare(page, db.parent)
        try:
            for _ in range(200):
                try:
                    client.get(bare_url)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            floor = statistics.median(measure(lambda i: get(bare_url), args.requests))
            ours = statistics.median(measure(lambda i: get(account_state(i)), args.requests))
        finally:
            bare.terminate()
            bare.wait(timeout=10)
        print(
            f"HTTP floor: bare Starlette endpoint with the same {len(page):,}-byte body p50 "
            f"{floor:.2f} ms; gateway account+state query p50 {ours:.2f} ms "
            f"({ours / floor:.1f}x the floor)"
        )
    finally:
        client.close()
        gateway.terminate()
        gateway.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
