"""A cache hit against the least a server can do: `GET /customerBill/{id}` beside bare Starlette.

Starts, on loopback, the gateway with config/secure.yaml (authentication on: every
request carries a bearer token, signed with a development key made for this run, and
is verified and scope-checked) over the demo database, its bill TTL raised so that the
run is all hits and its background work (on-demand worker, change detector) left out;
and a bare Starlette endpoint answering the same bytes, served as the
gateway is (uvicorn, httptools). The same lean client (keep-alive connections, httptools
parsing, the same request bytes, token included) drives both, alternately, three rounds;
each round's ratio and their median are printed (target >= 0.6).

Wall-clock rates on a shared machine are noisy, so with `--callgrind` each server is
also run under valgrind's callgrind and the instructions it executes per request
(uvicorn included, client excluded) are counted for both: a ratio that noise does not
move.

One run, this machine; not a test.

    python bench/cache_hit.py [--requests 10000] [--callgrind]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.resilience import drive, free_port  # noqa: E402
from simulators.billing_db import ensure_demo_database  # noqa: E402

API = "/tmf-api/customerBillManagement/v5"
BILL = f"{API}/customerBill/1"
#: Long enough that the whole run is served from the cache.
TTL = 3600


def gateway_config(tmp: Path) -> Path:
    """config/secure.yaml, its bill TTL raised, without its background work.

    The on-demand worker and the change detector poll on their own: instructions counted
    for the whole process would charge their polls to the requests.
    """
    text = (ROOT / "config" / "secure.yaml").read_text()
    config = yaml.safe_load(text.replace("../mappings/", f"{ROOT}/mappings/"))
    for background in ("on_demand", "events", "store"):
        config.pop(background, None)
    config["resilience"] = {"cache": {"ttl_seconds": {"customerBill": TTL}}}
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_up(url: str, headers: dict[str, str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, headers=headers, timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def rate(port: int, token: str, total: int, connections: int) -> float:
    load = asyncio.run(drive(port, lambda i: BILL, total, connections, token))
    if set(load.statuses) != {200}:
        raise SystemExit(f"unexpected answers: {dict(load.statuses)}")
    return load.rate


def instructions(pid: int) -> int:
    """Instructions the callgrind-run process executed since its counters were zeroed."""
    out = subprocess.run(
        ["callgrind_control", "-b", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    found = re.search(r"Ir:\s*([\d,]+)|Events collected:\s*Ir\s*\n\s*([\d,]+)", out)
    if found is None:  # older valgrind: ask for the totals
        stats = subprocess.run(
            ["callgrind_control", "-s", str(pid)], capture_output=True, text=True, check=False
        ).stdout
        found = re.search(r"Ir:\s*([\d,]+)", stats)
    if found is None:
        raise SystemExit(f"no instruction count from callgrind_control: {out[-300:]}")
    return int((found.group(1) or found.group(2)).replace(",", ""))


def start(
    command: list[str], env: dict[str, str], callgrind: Path | None
) -> subprocess.Popen[bytes]:
    if callgrind is not None:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={callgrind}",
            *command,
        ]
    return subprocess.Popen(
        command,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if callgrind is not None else None,
    )


def counted(
    process: subprocess.Popen[bytes], out: Path, port: int, token: str, requests: int
) -> float:
    """Instructions per request of `process`, over `requests` hits (after a warm-up)."""
    rate(port, token, 200, 4)
    subprocess.run(
        ["callgrind_control", "-i", "on", str(process.pid)], check=True, capture_output=True
    )
    rate(port, token, requests, 4)
    subprocess.run(
        ["callgrind_control", "-i", "off", str(process.pid)], check=True, capture_output=True
    )
    subprocess.run(["callgrind_control", "-d", str(process.pid)], check=True, capture_output=True)
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--callgrind", action="store_true", help="count instructions too")
    parser.add_argument("--callgrind-requests", type=int, default=1000)
    args = parser.parse_args()
    if args.callgrind and shutil.which("valgrind") is None:
        print("valgrind is not installed: instruction counts skipped")
        args.callgrind = False
    db = ROOT / "var" / "legacy_billing.sqlite"
    ensure_demo_database(str(db))
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        issuer = "http://127.0.0.1/bench-issuer"
        token = subprocess.run(
            [sys.executable, "-m", "gateway", "token", "--dir", name, "--issuer", issuer]
            + ["--scope", "tmf678:read tmf678:all-accounts", "--ttl", "3600"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        env = {
            "LEGACY_DB": str(db),
            "GATEWAY_STORE": f"{name}/store.sqlite",
            "AUTH_JWKS_FILE": f"{name}/dev-jwks.json",
            "AUTH_ISSUER": issuer,
        }
        config = gateway_config(tmp)
        headers = {"Authorization": f"Bearer {token}"}
        results: dict[str, list[float]] = {"gateway, cache hit": [], "bare Starlette": []}
        counts: dict[str, float] = {}
        for callgrind in (False, True) if args.callgrind else (False,):
            port, bare_port = free_port(), free_port()
            out = {name: tmp / f"callgrind.{n}" for n, name in enumerate(results)}
            gateway_cmd = [sys.executable, "-m", "gateway", "--config", str(config)]
            gateway_cmd += ["--log-level", "WARNING"]
            body = tmp / "bill.json"
            processes = [
                start(
                    gateway_cmd,
                    {**env, "PORT": str(port)},
                    out["gateway, cache hit"] if callgrind else None,
                )
            ]
            try:
                wait_up(f"http://127.0.0.1:{port}{BILL}", headers)
                reply = httpx.get(f"http://127.0.0.1:{port}{BILL}", headers=headers, timeout=60)
                if reply.status_code != 200:
                    raise SystemExit(f"gateway answered {reply.status_code}: {reply.text[:300]}")
                body.write_bytes(reply.content)
                size = len(reply.content)
                bare_cmd = [sys.executable, __file__.replace("cache_hit", "resilience")]
                bare_cmd += ["--bare-port", str(bare_port), "--bare-body", str(body)]
                processes.append(start(bare_cmd, {}, out["bare Starlette"] if callgrind else None))
                wait_up(f"http://127.0.0.1:{bare_port}{BILL}", headers)
                if callgrind:
                    for (label, target), process in zip(
                        (("gateway, cache hit", port), ("bare Starlette", bare_port)),
                        processes,
                        strict=True,
                    ):
                        counts[label] = counted(
                            process, out[label], target, token, args.callgrind_requests
                        )
                else:
                    rate(port, token, 1000, args.connections)  # warm-up
                    for _ in range(3):  # alternately, so neither gets the quieter moment
                        for label, target in (
                            ("gateway, cache hit", port),
                            ("bare Starlette", bare_port),
                        ):
                            results[label].append(
                                rate(target, token, args.requests, args.connections)
                            )
            finally:
                for process in processes:
                    process.terminate()
                    process.wait(timeout=30)
    print(
        f"GET /customerBill/{{id}}, {size} bytes,"
        f" bearer token, {args.connections} keep-alive connections, {os.cpu_count()} cores:"
    )
    for label, values in results.items():
        print(f"   {label:20s} req/s: {', '.join(f'{v:,.0f}' for v in values)}")
    # Each round's two runs are side by side: their ratio is what others' load moves least.
    paired = [g / b for g, b in zip(*results.values(), strict=True)]
    print(
        f"   cache hit / bare, per round: {', '.join(f'{r:.2f}' for r in paired)};"
        f" median {statistics.median(paired):.2f} (target >= 0.6)"
    )
    if counts:
        gateway, bare = counts["gateway, cache hit"], counts["bare Starlette"]
        print(
            f"   instructions per request (callgrind, server side): gateway {gateway:,.0f},"
            f" bare {bare:,.0f}; bare / gateway {bare / gateway:.2f} (target >= 0.6)"
        )


if __name__ == "__main__":
    main()
