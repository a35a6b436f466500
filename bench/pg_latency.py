"""The gateway over the 1,000,000-bill demo database on PostgreSQL, beside a bare endpoint.

Issue #14's figures: p50/p95 of filtered+sorted lists and of a page of 100 (sequential
requests), and the throughput of uncached `GET /customerBill/{id}` (random ids, 50
concurrent clients) through the gateway beside a bare Starlette + asyncpg endpoint that
sends PostgreSQL the very same two statements the gateway's SQL adapter sends (the bill's
header row, then its tax rows), measured side by side in one run, alternating.

The database (`--db`, default `tmf678_bench`) is created and seeded when it is missing or
empty (`python -m simulators.billing_db`, several minutes for a million bills), and reused
otherwise. The gateway runs the shipped configuration with the read cache off (every
request reaches PostgreSQL) and no change detector. When PostgreSQL is not reachable it
says so and exits 0: a skipped benchmark, not a failed one. One run, this machine.

    python bench/pg_latency.py [--server postgresql://postgres@127.0.0.1:5432]
                               [--db tmf678_bench] [--bills 1000000]
                               [--requests 300] [--throughput 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy.dialects import postgresql  # noqa: E402
from sqlalchemy.schema import CreateIndex  # noqa: E402

from simulators.billing_db import inv_hdr, seed_if_empty  # noqa: E402

API = "/tmf-api/customerBillManagement/v5"
CLIENTS = 50
#: The statements the SQL adapter sends for `GET /customerBill/{id}` with the demo
#: mapping, as SQLAlchemy renders them for asyncpg (seen with `echo`): the header row,
#: then the tax rows of the bills found.
BILL_SQL = (
    'SELECT "INV_HDR"."INV_ID", "INV_HDR"."INV_NO", "INV_HDR"."ACCT_NO", "INV_HDR"."RUN_ID", '
    '"INV_HDR"."INV_DT", "INV_HDR"."PRD_FROM_DT", "INV_HDR"."PRD_TO_DT", "INV_HDR"."DUE_DT", '
    '"INV_HDR"."NXT_INV_DT", "INV_HDR"."STAT_CD", "INV_HDR"."RUN_TYP", "INV_HDR"."CAT_CD", '
    '"INV_HDR"."NET_AMT", "INV_HDR"."TAX_AMT", "INV_HDR"."GRS_AMT", "INV_HDR"."OPEN_AMT", '
    '"INV_HDR"."CURR_CD", "INV_HDR"."ARCH_KEY", "INV_HDR"."UPD_TS", "INV_HDR"."EXT_REF" \n'
    'FROM "INV_HDR" \nWHERE "INV_HDR"."INV_ID" = $1::INTEGER \n LIMIT $2::INTEGER'
)
TAX_SQL = (
    'SELECT "INV_TAX"."INV_ID", "INV_TAX"."SEQ_NO", "INV_TAX"."TAX_CD", "INV_TAX"."TAX_RT", '
    '"INV_TAX"."TAX_AMT" \nFROM "INV_TAX" \nWHERE "INV_TAX"."INV_ID" IN ($1::INTEGER) '
    'ORDER BY "INV_TAX"."INV_ID", "INV_TAX"."SEQ_NO"'
)

# The bare endpoint: Starlette on uvicorn (httptools, as the gateway), an asyncpg pool as
# large as SQLAlchemy's default (5 kept + 10 overflow), the two statements above, the
# rows as JSON. No mapping, no TMF shape: what any Python service over this SQL costs.
BARE_APP = """
import json, sys, asyncpg, uvicorn
from contextlib import asynccontextmanager
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
port, dsn, bill_sql, tax_sql = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
pool = None
@asynccontextmanager
async def lifespan(app):
    global pool
    pool = await asyncpg.create_pool(dsn, min_size=5, max_size=15)
    yield
    await pool.close()
async def bill(request):
    try:
        key = int(request.path_params["id"])
    except ValueError:
        return Response(b'{"code":"404"}', status_code=404, media_type="application/json")
    async with pool.acquire() as conn:
        row = await conn.fetchrow(bill_sql, key, 1, timeout=10)
        if row is None:
            return Response(b'{"code":"404"}', status_code=404, media_type="application/json")
        taxes = await conn.fetch(tax_sql, key, timeout=10)
    body = dict(row)
    body["taxes"] = [dict(t) for t in taxes]
    return Response(json.dumps(body, default=str), media_type="application/json")
app = Starlette(routes=[Route("/customerBill/{id}", bill)], lifespan=lifespan)
uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", access_log=False,
            log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def reachable(dsn: str) -> str | None:
    """None when PostgreSQL answers at `dsn`, else why not."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def prepare(server: str, db: str, bills: int) -> tuple[int, int, list[str]]:
    """The bench database, created and seeded if missing, with the demo schema's indexes;
    its bill count, highest id and some billing accounts. Vacuumed and analysed, as a
    production database is."""
    admin = await asyncpg.connect(f"{server}/postgres", timeout=10)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", db):
            await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    url = f"{server.replace('postgresql://', 'postgresql+asyncpg://')}/{db}"
    started = time.perf_counter()
    if await asyncio.to_thread(seed_if_empty, url, bills=bills):
        print(f"seeded {db} with {bills:,} bills in {time.perf_counter() - started:.0f} s")
    conn = await asyncpg.connect(f"{server}/{db}", timeout=10)
    try:
        # A database seeded before an index was added to the demo schema gets it now.
        for index in sorted(inv_hdr.indexes, key=lambda ix: str(ix.name)):
            ddl = CreateIndex(index, if_not_exists=True).compile(dialect=postgresql.dialect())
            await conn.execute(str(ddl), timeout=1800)
        await conn.execute('VACUUM (ANALYZE) "INV_HDR", "INV_TAX"', timeout=1800)
        count, highest = await conn.fetchrow('SELECT count(*), max("INV_ID") FROM "INV_HDR"')
        accounts = [
            r[0]
            for r in await conn.fetch(
                'SELECT DISTINCT "ACCT_NO" FROM "INV_HDR" WHERE "INV_ID" % 997 = 0 LIMIT 500'
            )
        ]
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size($1))", db)
    finally:
        await conn.close()
    print(f"benchmark database {db}: {count:,} bills ({size})")
    return count, highest, accounts


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait(url: str, process: subprocess.Popen[bytes], tries: int = 600) -> None:
    for _ in range(tries):
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def latencies(client: httpx.Client, url: Callable[[int], str], requests: int) -> list[float]:
    """Milliseconds of `requests` sequential GETs after 20 warm-up ones."""
    samples = []
    for i in range(-20, requests):
        started = time.perf_counter()
        response = client.get(url(i))
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"{url(i)}: {response.status_code} {response.text[:200]}")
        if i >= 0:
            samples.append(elapsed)
    return samples


async def throughput(urls: list[str], pid: int) -> tuple[float, float]:
    """Requests per second over `urls` with CLIENTS concurrent aiohttp clients, and the
    CPU milliseconds each cost the server process `pid`."""
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def get(url: str) -> None:
            async with session.get(url) as reply:
                await reply.read()
                if reply.status != 200:
                    raise SystemExit(f"{url}: {reply.status}")

        await asyncio.gather(*(get(u) for u in urls[:CLIENTS]))  # every connection open
        pending = iter(urls)

        async def worker() -> None:
            for url in pending:
                await get(url)

        started, cpu = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - started
        return len(urls) / elapsed, (cpu_seconds(pid) - cpu) / len(urls) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--db", default="tmf678_bench")
    parser.add_argument("--bills", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300, help="per latency scenario")
    parser.add_argument("--throughput", type=int, default=3000, help="GETs per throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="throughput runs of each")
    args = parser.parse_args()
    server = args.server.rstrip("/")
    why = asyncio.run(reachable(f"{server}/postgres"))
    if why is not None:
        print(
            f"bench/pg_latency.py skipped: PostgreSQL not reachable at {server} ({why}); "
            "start PostgreSQL there or pass --server"
        )
        return 0
    print(f"load average before: {load_average()} ({os.cpu_count()} cores)")
    bills, highest, accounts = asyncio.run(prepare(server, args.db, args.bills))

    work = Path(tempfile.mkdtemp(prefix="tmf678-pgbench-"))
    config = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    config.pop("events", None)  # no change detector competing with the measurement
    config["resilience"]["cache"]["enabled"] = False  # every request reaches PostgreSQL
    # 50 clients on a busy machine: wait for a back-end slot rather than shed load.
    config["resilience"]["default"]["bulkhead"]["max_wait_seconds"] = 30
    config_path = work / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config).replace("../mappings/", f"{ROOT}/mappings/"))
    gw_port, bare_port = free_port(), free_port()
    env = {
        "LEGACY_DB_URL": f"{server.replace('postgresql://', 'postgresql+asyncpg://')}/{args.db}",
        "GATEWAY_STORE": str(work / "store.sqlite"),
        "PORT": str(gw_port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
    }
    gateway = bare = None
    try:
        gateway = start(["-m", "gateway", "--config", str(config_path)], env)
        bare = start(["-c", BARE_APP, str(bare_port), f"{server}/{args.db}", BILL_SQL, TAX_SQL])
        gw = f"http://127.0.0.1:{gw_port}{API}"
        direct = f"http://127.0.0.1:{bare_port}"
        wait(f"{gw}/billCycle?limit=1", gateway)
        wait(f"{direct}/customerBill/1", bare)

        rng = random.Random(678)
        ids = [rng.randint(1, highest) for _ in range(100_000)]
        scenarios: list[tuple[str, str, Callable[[int], str]]] = [
            (
                "`GET /customerBill?state=new&sort=-billDate&limit=20`",
                "< 20 ms",
                lambda i: f"{gw}/customerBill?state=new&sort=-billDate&limit=20",
            ),
            (
                "`GET /customerBill?billingAccount.id=<a>&sort=-billDate` (500 accounts)",
                "< 20 ms",
                lambda i: (
                    f"{gw}/customerBill?billingAccount.id={accounts[i % len(accounts)]}"
                    "&sort=-billDate"
                ),
            ),
            (
                "`GET /customerBill?limit=100&offset=5000`",
                "< 30 ms",
                lambda i: f"{gw}/customerBill?limit=100&offset=5000",
            ),
            (
                "`GET /customerBill?limit=100&offset=<n>` (random n < 100,000)",
                "< 30 ms",
                lambda i: f"{gw}/customerBill?limit=100&offset={ids[i + 20] % 100_000}",
            ),
            (
                "`GET /customerBill/<id>` (random ids), gateway",
                "-",
                lambda i: f"{gw}/customerBill/{ids[i + 20]}",
            ),
            (
                "`GET /customerBill/<id>` (random ids), bare Starlette + asyncpg",
                "-",
                lambda i: f"{direct}/customerBill/{ids[-i - 21]}",
            ),
        ]
        print(f"{args.requests} sequential requests per scenario after 20 warm-up requests\n")
        print("| request | p50 ms | p95 ms | target p50 |")
        print("|---|---:|---:|---|")
        with httpx.Client(timeout=60) as client:
            for name, target, url in scenarios:
                samples = latencies(client, url, args.requests)
                p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
                print(f"| {name} | {p50:.1f} | {p95:.1f} | {target} |", flush=True)

        print(
            f"\nuncached GET /customerBill/<id>, random ids of {bills:,}, {CLIENTS} concurrent "
            f"clients (aiohttp), {args.throughput} requests per run, alternating\n"
        )
        print(
            "| run | gateway req/s | bare req/s | gateway / bare | gateway CPU ms/req "
            "| bare CPU ms/req |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        ratios = []
        for n in range(args.rounds):
            start_at = 100 + n * 2 * args.throughput
            chunk = ids[start_at : start_at + args.throughput]
            other = ids[start_at + args.throughput : start_at + 2 * args.throughput]
            ours, our_cpu = asyncio.run(
                throughput([f"{gw}/customerBill/{i}" for i in chunk], gateway.pid)
            )
            theirs, their_cpu = asyncio.run(
                throughput([f"{direct}/customerBill/{i}" for i in other], bare.pid)
            )
            ratios.append(ours / theirs)
            print(
                f"| {n + 1} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f} "
                f"| {our_cpu:.2f} | {their_cpu:.2f} |",
                flush=True,
            )
        print(
            f"\ngateway / bare throughput: {min(ratios):.2f} to {max(ratios):.2f} (target >= 0.5)"
        )
    finally:
        stop(gateway)
        stop(bare)
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
