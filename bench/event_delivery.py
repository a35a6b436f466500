"""Event delivery throughput: 10 subscribers on loopback, one of which never answers.

Runs the gateway's store, publisher and delivery worker in this process over a fresh
demo database, a listener server in another process, queues N events (each fanned out
to every hub, as the publisher does), and times until every healthy subscriber has all
of them, and the CPU this process spent per healthy delivery. One run, this machine; not
a test.

    python bench/event_delivery.py [--events 2000]
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
from contextlib import AsyncExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.app import open_services  # noqa: E402
from gateway.auth import Caller  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.events import build_event  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.resources import API_PREFIX as API  # noqa: E402
from simulators.billing_db import ensure_demo_database  # noqa: E402

LISTENER = """
import asyncio, collections, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
counts = collections.Counter()
async def receive(request):
    hub = request.path_params["hub"]
    await request.body()
    if hub == "slow":
        await asyncio.sleep(3600)
    counts[hub] += 1
    return Response(status_code=204)
async def stats(request):
    return JSONResponse(counts)
routes = [Route("/stats", stats), Route("/{hub}/listener/{name}", receive, methods=["POST"])]
app = Starlette(routes=routes)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def main(events: int) -> None:
    configure_logging("WARNING")
    port = free_port()
    listener = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)])
    base = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="tmf678-bench-"))
    db = ensure_demo_database(work / "legacy.sqlite")
    os.environ["LEGACY_DB"] = str(db)
    os.environ["GATEWAY_STORE"] = str(work / "store.sqlite")
    config = load_config(ROOT / "config" / "default.yaml")
    assert config.events is not None
    delivery = config.events.delivery.model_copy(
        update={"timeout_seconds": 2, "poll_seconds": 0.05}
    )
    events_settings = config.events.model_copy(
        update={"delivery": delivery, "change_detection": {}}
    )
    config = config.model_copy(update={"events": events_settings, "on_demand": None})
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    await client.get(f"{base}/stats")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            async with AsyncExitStack() as stack:
                services = await open_services(config, stack, f"http://127.0.0.1{API}")
                assert services.hubs is not None and services.publisher is not None
                hubs = [f"ok{i}" for i in range(9)] + ["slow"]
                for name in hubs:
                    await services.hubs.register(
                        f'{{"callback": "{base}/{name}"}}'.encode(), Caller.ANONYMOUS
                    )
                bill = await services.customer_bills.get("1", services.event_base_url)
                assert bill is not None
                batch = [build_event("CustomerBillStateChangeEvent", bill) for _ in range(events)]
                publisher = services.publisher
                started = time.perf_counter()
                cpu_started = time.process_time()
                async with publisher.store.transaction() as conn:
                    queued = await publisher.publish(conn, batch)
                publisher.wake()
                queue_seconds = time.perf_counter() - started
                healthy = 9 * events
                while True:
                    counts = (await client.get(f"{base}/stats")).json()
                    done = sum(counts.get(h, 0) for h in hubs[:9])
                    if done >= healthy:
                        break
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
    finally:
        listener.kill()  # it holds the never-answering subscriber's request open
        listener.wait(timeout=10)
    print(f"{events} events x 10 subscribers ({queued} outbox rows; one subscriber never answers)")
    print(
        f"queued in {queue_seconds:.2f} s; all {healthy} healthy deliveries done in {elapsed:.2f} s"
    )
    print(f"healthy deliveries/s: {healthy / elapsed:,.0f} (target >= 500)")
    print(f"per healthy subscriber: {events / elapsed:,.0f} events/s")
    # CPU of this process (store, publisher, delivery worker; not the listener): less
    # swayed by other work on the machine than the rate.
    print(f"gateway CPU per healthy delivery: {cpu / healthy * 1e6:,.0f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    asyncio.run(main(parser.parse_args().events))
