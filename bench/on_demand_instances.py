"""Bills on demand across gateway instances sharing one PostgreSQL store.

Seeds a legacy billing database (SQLite, the bundled demo schema) with more accounts to
bill than requests, then, side by side in one run: one gateway, and three gateways on one
PostgreSQL store (each run on a fresh copy of the database and a fresh store database).
Each run posts N `POST /customerBillOnDemand` requests (one per account, spread round-robin
over the instances by 32 concurrent clients) and waits until every request is in a final
state. It prints the time to accept them all, the time until all were final, the rate, and
checks that each request ended exactly once: `done` with exactly one bill in the back end
(found by the request id the bill records), or not done and no bill. Beside the rate, the
CPU the gateway processes spent per request (from /proc), which moves less than the rate
when other work shares the machine.

The gateways are the shipped configuration (config/default.yaml: worker polling, leases,
concurrency as delivered). The back end is one SQLite file that every instance writes, so
its write lock is shared too: the figure is what the store and workers sustain over it,
not a scaling curve. Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust).

    python bench/on_demand_instances.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulators.billing_db import create_and_seed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
API = "/tmf-api/customerBillManagement/v5"
POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432"
CLIENTS = 32
FINAL = ("done", "rejected", "terminatedWithError")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def admin(statement: str) -> None:
    engine = create_async_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def store_states(url: str) -> dict[str, str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT id, state FROM bill_on_demand"))
            return {ident: state for ident, state in rows}
    finally:
        await engine.dispose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def accounts_to_bill(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT c.ACCT_NO FROM CHG_LINE c JOIN ACCT_MASTER a ON a.ACCT_NO = c.ACCT_NO"
            " WHERE c.INV_ID IS NULL AND a.STAT_CD = 'A' GROUP BY c.ACCT_NO ORDER BY c.ACCT_NO"
        )
        return [r[0] for r in rows]


def start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(ROOT / "config" / "default.yaml")],
            cwd=ROOT,
            env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}{API}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gateway exited:\n{log.read_text()}")
        try:
            httpx.get(f"{base}/customerBill?limit=1", timeout=2)
            return process, base
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("gateway did not start")


async def post_all(bases: list[str], accounts: list[str]) -> list[str]:
    """One request per account, round-robin over the instances; their ids, in order."""
    ids: list[str] = [""] * len(accounts)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(accounts)):
        queue.put_nowait(index)
    async with httpx.AsyncClient(timeout=30) as client:

        async def client_loop() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                response = await client.post(
                    f"{bases[index % len(bases)]}/customerBillOnDemand",
                    json={"billingAccount": {"id": accounts[index]}},
                )
                if response.status_code != 201:
                    raise SystemExit(f"POST answered {response.status_code}: {response.text}")
                ids[index] = response.json()["id"]

        await asyncio.gather(*(client_loop() for _ in range(CLIENTS)))
    return ids


def run(instances: int, seeded: Path, work: Path, requests: int) -> dict[str, float]:
    """N requests across `instances` gateways on a fresh store; timings, after checking."""
    db = work / f"legacy-{instances}.sqlite"
    shutil.copyfile(seeded, db)
    name = f"bench_on_demand_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    store = f"{POSTGRES}/{name}"
    env = {"LEGACY_DB": str(db), "GATEWAY_STORE_URL": store}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        bases = []
        for n in range(instances):
            process, base = start(env, work / f"gateway-{instances}-{n}.log")
            processes.append(process)
            bases.append(base)
        accounts = accounts_to_bill(db)[:requests]
        if len(accounts) < requests:
            raise SystemExit(f"only {len(accounts)} accounts to bill")
        cpu_before = sum(cpu_seconds(p.pid) for p in processes)
        began = time.perf_counter()
        ids = asyncio.run(post_all(bases, accounts))
        accepted = time.perf_counter() - began
        deadline = time.monotonic() + 600
        while True:
            states = asyncio.run(store_states(store))
            if all(states.get(i) in FINAL for i in ids):
                break
            if time.monotonic() > deadline:
                raise SystemExit("requests still in progress after 10 minutes")
            time.sleep(0.1)
        finished = time.perf_counter() - began
        cpu = sum(cpu_seconds(p.pid) for p in processes) - cpu_before
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        final = asyncio.run(store_states(store))
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))
    with sqlite3.connect(db) as conn:
        bills: dict[str, int] = {}
        for (ref,) in conn.execute("SELECT EXT_REF FROM INV_HDR WHERE EXT_REF IS NOT NULL"):
            bills[ref] = bills.get(ref, 0) + 1
    wrong = [
        i
        for i in ids
        if bills.get(i, 0) != (1 if final[i] == "done" else 0) or final[i] not in FINAL
    ]
    if wrong or len(final) != requests:
        raise SystemExit(f"{len(wrong)} requests did not end exactly once: {wrong[:5]}")
    done = sum(1 for i in ids if final[i] == "done")
    return {"accepted": accepted, "finished": finished, "done": done, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    try:
        asyncio.run(admin("SELECT 1"))
    except Exception as exc:  # any failure to reach it
        raise SystemExit(f"PostgreSQL at 127.0.0.1:5432 (user postgres) is needed: {exc}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seeded = work / "seeded.sqlite"
        create_and_seed(
            f"sqlite:///{seeded}",
            bills=300,
            accounts=args.requests + args.requests // 3,
            unbilled=args.requests * 7,
        )
        print(f"{args.requests} on-demand requests, {CLIENTS} clients, one PostgreSQL store")
        results = {n: run(n, seeded, work, args.requests) for n in (1, 3)}
    for n, figures in results.items():
        rate = args.requests / figures["finished"]
        print(
            f"  {n} instance{'s' if n > 1 else ' '}: accepted in {figures['accepted']:6.2f} s,"
            f" all final in {figures['finished']:6.2f} s ({rate:6.1f} requests/s),"
            f" {figures['done']:.0f} done, each exactly once;"
            f" gateway CPU {1000 * figures['cpu'] / args.requests:.1f} ms per request"
        )
    ratio = results[1]["finished"] / results[3]["finished"]
    print(f"  three instances / one: {ratio:.2f}x the rate")


if __name__ == "__main__":
    main()
