"""Throughput through the REST and SOAP adapters beside the simulators called directly.

For each kind: starts its simulator and a gateway over it (cache-less: the gateway has no
cache), then drives `GET /customerBill/{id}` and `GET /customerBill?limit=50` with 50
concurrent clients for a fixed number of requests, and the same calls straight to the
simulator. Each pair is driven twice: by a plain httpx client (stock transport), whose
own cost per request caps what it can measure, and by a lean client (aiohttp's own
client, a fraction of that cost), which shows what the servers do. Beside each rate, the
CPU milliseconds one request cost the server (gateway or simulator, from /proc): unlike
the rates, that figure barely moves when other work shares the machine.
Also times how the SOAP adapter reads a 500-record reply (lxml, flat records) against
zeep's own object parsing. One run, this machine.

`--instructions` measures instead what one request costs the gateway in instructions
executed (valgrind's cachegrind on the gateway process; these do not move with the
machine's load): per kind and request, a gateway run with a warm-up and N sequential
requests less a run with the warm-up only, divided by N.

    python bench/adapter_throughput.py [--requests 2000]
    python bench/adapter_throughput.py --instructions [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
API = "/tmf-api/customerBillManagement/v5"
CLIENTS = 50
SOAP_LIST = (
    '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
    '<s:Body><cb:ListInvoices xmlns:cb="urn:example:consumer-billing:v2"><cb:fromIndex>0'
    "</cb:fromIndex><cb:maxRecords>50</cb:maxRecords></cb:ListInvoices></s:Body></s:Envelope>"
)
SOAP_GET = (
    '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
    '<s:Body><cb:GetInvoice xmlns:cb="urn:example:consumer-billing:v2"><cb:invoiceRef>{}'
    "</cb:invoiceRef></cb:GetInvoice></s:Body></s:Envelope>"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(url: str, tries: int = 200) -> None:
    for _ in range(tries):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


RETRIED = [0]  # GETs the httpx load client sent again
FAILED = [b""]  # the start of the last failed GET's reply


class LoadClient:
    """GET and POST returning the status, the reply read whole: stock httpx, or (lean)
    aiohttp's client used directly."""

    def __init__(self, lean: bool) -> None:
        self.lean = lean
        if lean:
            connector = aiohttp.TCPConnector(limit=CLIENTS)
            self.session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=30)
            )
        else:
            limits = httpx.Limits(max_connections=CLIENTS)
            self.client = httpx.AsyncClient(timeout=30, limits=limits)

    async def get(self, url: str, headers: dict[str, str] | None = None) -> int:
        if self.lean:  # aiohttp sends an idempotent request again on a stale connection
            async with self.session.get(url, headers=headers) as reply:
                FAILED[0] = (await reply.read())[:300] if reply.status != 200 else b""
                return reply.status
        try:
            response = await self.client.get(url, headers=headers)
            FAILED[0] = response.content[:300] if response.status_code != 200 else b""
            return response.status_code
        except (httpx.ReadError, httpx.RemoteProtocolError):
            # httpx does not: a keep-alive connection the server closed just as it was
            # reused costs one more try, as with aiohttp (a stalled run otherwise).
            RETRIED[0] += 1
            return (await self.client.get(url, headers=headers)).status_code

    async def post(self, url: str, content: str, headers: dict[str, str]) -> int:
        if self.lean:
            async with self.session.post(url, data=content.encode(), headers=headers) as reply:
                await reply.read()
                return reply.status
        return (await self.client.post(url, content=content, headers=headers)).status_code

    async def close(self) -> None:
        await (self.session.close() if self.lean else self.client.aclose())


Request = Callable[[LoadClient, int], Awaitable[int]]


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, Linux /proc): what a request costs the
    server, whatever else the machine is doing."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(make_request: Request, total: int, lean: bool, server: int) -> tuple[float, float]:
    """Requests per second with CLIENTS concurrent clients, and the CPU milliseconds each
    cost the `server` process."""
    c = LoadClient(lean)
    try:
        counter = iter(range(total))

        async def worker() -> None:
            for n in counter:
                status = await make_request(c, n)
                if status != 200:
                    raise SystemExit(f"request {n}: {status} {FAILED[0]!r}")

        for _ in range(3):  # warm up: every client's connection open and used
            await asyncio.gather(*(make_request(c, n) for n in range(CLIENTS)))
        started, cpu = time.perf_counter(), cpu_seconds(server)
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        rate = total / (time.perf_counter() - started)
        return rate, (cpu_seconds(server) - cpu) / total * 1000
    finally:
        await c.close()


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


Row = tuple[str, str, tuple[float, float], tuple[float, float]]


async def bench_kind(kind: str, total: int, work: Path) -> list[Row]:
    sim_port, gw_port = free_port(), free_port()
    module = "simulators.rest_billing" if kind == "rest" else "simulators.soap_billing"
    simulator = start(["-m", module, "--port", str(sim_port)])
    sim = f"http://127.0.0.1:{sim_port}"
    env = {
        "PORT": str(gw_port),
        "LOG_LEVEL": "WARNING",
        "GATEWAY_STORE": str(work / f"store-{kind}.sqlite"),
        "ENTERPRISE_URL": sim,
        "CONSUMER_WSDL": f"{sim}/billing.wsdl",
    }
    gateway = None
    try:
        wait(f"{sim}/billing.wsdl" if kind == "soap" else f"{sim}/api/v1/invoices")
        # The adapter path itself: the read cache (on by default) would answer repeats.
        config = ROOT / "config" / f".bench-{kind}.yaml"
        config.write_text(
            (ROOT / "config" / f"{kind}.yaml").read_text()
            + "\nresilience:\n  cache: {enabled: false}\n"
            # 50 clients on a busy machine: wait for a back-end slot rather than shed load.
            + "  default: {bulkhead: {max_wait_seconds: 30}}\n"
        )
        gateway = start(["-m", "gateway", "--config", str(config)], env)
        gw = f"http://127.0.0.1:{gw_port}{API}"
        wait(f"{gw}/customerBill?limit=1")
        auth: dict[str, str] = {}

        def fresh_token() -> None:
            """A token for the direct REST runs, each its own (they live 300 s)."""
            if kind == "rest":
                token = httpx.post(
                    f"{sim}/oauth/token",
                    data={"grant_type": "client_credentials"},
                    auth=("gateway", "s3cret"),
                ).json()["access_token"]
                auth["Authorization"] = f"Bearer {token}"

        if kind == "rest":
            ids = [f"EI-{n:06d}" for n in range(1, 81)]

            def direct_one(c, n):
                return c.get(f"{sim}/api/v1/invoices/{ids[n % 80]}", headers=auth)

            def direct_list(c, n):
                return c.get(f"{sim}/api/v1/invoices?page=1&size=50", headers=auth)
        else:
            ids = [f"C-{1001 + n}" for n in range(120)]
            xml = {"Content-Type": "text/xml"}

            def direct_one(c, n):
                return c.post(f"{sim}/soap", content=SOAP_GET.format(ids[n % 120]), headers=xml)

            def direct_list(c, n):
                return c.post(f"{sim}/soap", content=SOAP_LIST, headers=xml)

        rows = []
        for name, via_gateway, direct in (
            (
                "GET /customerBill/{id}",
                lambda c, n: c.get(f"{gw}/customerBill/{ids[n % len(ids)]}"),
                direct_one,
            ),
            (
                "GET /customerBill?limit=50",
                lambda c, n: c.get(f"{gw}/customerBill?limit=50"),
                direct_list,
            ),
        ):
            for lean in (False, True):
                ours = await drive(via_gateway, total, lean, gateway.pid)
                fresh_token()
                theirs = await drive(direct, total, lean, simulator.pid)
                client = "aiohttp" if lean else "httpx"
                rows.append((f"{kind.upper()} `{name}`", client, ours, theirs))
        return rows
    finally:
        (ROOT / "config" / f".bench-{kind}.yaml").unlink(missing_ok=True)
        for process in (gateway, simulator):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


WARM_UP = 60  # sequential requests of each kind before counting


def gateway_instructions(
    config: Path, env: dict[str, str], work: Path, warm: list[str], urls: list[str], count: int
) -> int:
    """Instructions one gateway process executed, start to stop, for the `warm` GETs and
    then `count` sequential GETs cycling through `urls` (aiohttp client)."""
    log = work / f"cachegrind-{time.monotonic_ns()}.log"
    valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--log-file={log}"]
    gateway = subprocess.Popen(
        [*valgrind, "--cachegrind-out-file=/dev/null", sys.executable, "-m", "gateway"]
        + ["--config", str(config)],
        cwd=ROOT,
        # One hash seed: every run then does the same start-up work, to the instruction.
        env={**os.environ, **env, "PYTHONHASHSEED": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait(warm[0], tries=3000)

        async def sequential(some: list[str]) -> None:
            async with aiohttp.ClientSession() as session:
                for url in some:
                    async with session.get(url) as reply:
                        await reply.read()
                        if reply.status != 200:
                            raise SystemExit(f"{url}: {reply.status}")

        asyncio.run(sequential(warm + [urls[n % len(urls)] for n in range(count)]))
    finally:
        gateway.terminate()
        gateway.wait(timeout=300)
    found = re.search(r"I\s+refs:\s+([\d,]+)", log.read_text())
    if found is None:
        raise SystemExit(f"no instruction count in {log}")
    return int(found.group(1).replace(",", ""))


def instructions(total: int) -> None:
    """Gateway instructions per request for each kind's single record and page of 50."""
    work = Path(tempfile.mkdtemp(prefix="tmf678-instructions-"))
    print(f"gateway instructions per request (cachegrind), {total} sequential requests\n")
    print("| request | instructions per request |")
    print("|---|---:|")
    for kind in ("rest", "soap"):
        sim_port, gw_port = free_port(), free_port()
        module = "simulators.rest_billing" if kind == "rest" else "simulators.soap_billing"
        simulator = start(["-m", module, "--port", str(sim_port)])
        sim = f"http://127.0.0.1:{sim_port}"
        config = ROOT / "config" / f".bench-{kind}.yaml"
        try:
            wait(f"{sim}/billing.wsdl" if kind == "soap" else f"{sim}/api/v1/invoices")
            # Pollers off (they would count instructions by the second, not the request).
            quiet = "on_demand:\n  worker: {poll_seconds: 86400}\n"
            config.write_text(
                (ROOT / "config" / f"{kind}.yaml").read_text().replace("on_demand:\n", quiet)
                + "\nresilience:\n  cache: {enabled: false}\n"
                + "events:\n  delivery: {poll_seconds: 86400}\n"
            )
            env = {
                "PORT": str(gw_port),
                "LOG_LEVEL": "WARNING",
                "ENTERPRISE_URL": sim,
                "CONSUMER_WSDL": f"{sim}/billing.wsdl",
            }
            gw = f"http://127.0.0.1:{gw_port}{API}/customerBill"
            ids = (
                [f"EI-{n:06d}" for n in range(1, 81)]
                if kind == "rest"
                else [f"C-{1001 + n}" for n in range(120)]
            )
            one = [f"{gw}/{i}" for i in ids]
            page = [f"{gw}?limit=50"]
            # The same warm-up (singles, then pages) in every run; only the count differs.
            warm = one[:WARM_UP] + page * WARM_UP
            counts = {}
            for name, urls, count in (
                ("", one, 0),
                ("GET /customerBill/{id}", one, total),
                ("GET /customerBill?limit=50", page, total),
            ):
                env["GATEWAY_STORE"] = str(work / f"store-{kind}-{len(counts)}.sqlite")
                counts[name] = gateway_instructions(config, env, work, warm, urls, count)
                if not name:
                    continue
                per_request = (counts[name] - counts[""]) / total
                print(f"| {kind.upper()} `{name}` | {per_request / 1e6:.2f} M |", flush=True)
        finally:
            config.unlink(missing_ok=True)
            simulator.terminate()
            simulator.wait(timeout=30)


def soap_parsing(records: int = 500) -> tuple[float, float]:
    """Milliseconds to read a `records`-invoice reply: flat lxml records vs zeep objects."""
    import zeep
    from lxml import etree

    from adapters.soap import _record
    from simulators.soap_billing import FIELDS, NS, WSDL

    invoice = "".join(f"<cb:{f}>v</cb:{f}>" for f in FIELDS)
    body = (
        f'<cb:ListInvoicesResponse xmlns:cb="{NS}"><cb:totalCount>{records}</cb:totalCount>'
        + f"<cb:invoice>{invoice}</cb:invoice>" * records
        + "</cb:ListInvoicesResponse>"
    )
    client = zeep.Client(str(WSDL))
    element = client.get_element(f"{{{NS}}}ListInvoicesResponse")
    node = etree.fromstring(body)
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        parsed = etree.fromstring(body)
        [_record(e) for e in parsed.iter("{*}invoice")]
    ours = (time.perf_counter() - started) / rounds * 1000
    started = time.perf_counter()
    for _ in range(rounds):
        element.parse(etree.fromstring(body), client.wsdl.types)
    theirs = (time.perf_counter() - started) / rounds * 1000
    del node
    return ours, theirs


async def main(total: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="tmf678-adapters-"))
    rows = []
    for kind in ("rest", "soap"):
        rows.extend(await bench_kind(kind, total, work))
    print(f"{total} requests per row, {CLIENTS} concurrent clients, loopback, one run\n")
    print(
        "| request | load client | gateway req/s | simulator direct req/s | gateway / direct "
        "| gateway CPU ms/req | simulator CPU ms/req |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, client, (ours, our_cpu), (theirs, their_cpu) in rows:
        print(
            f"| {name} | {client} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f} "
            f"| {our_cpu:.2f} | {their_cpu:.2f} |"
        )
    if RETRIED[0]:
        print(f"\n(httpx load client: {RETRIED[0]} GETs sent again on a new connection)")
    ours, theirs = soap_parsing()
    print(
        f"\nSOAP reply of 500 invoices: read as flat records (lxml) {ours:.1f} ms, "
        f"as zeep objects {theirs:.1f} ms ({theirs / ours:.1f}x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument(
        "--instructions", action="store_true", help="gateway instructions per request"
    )
    arguments = parser.parse_args()
    if arguments.instructions:
        instructions(arguments.requests or 500)
    else:
        asyncio.run(main(arguments.requests or 2000))
