"""A real event listener on loopback for the tests: records what it receives.

The first path segment chooses its behaviour, so one server plays many subscribers:
`/ok…` answers 204, `/flakyN…` fails the first N deliveries of each event, `/dead…`
always answers 500, `/slow…` never answers in time.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.servers import ThreadedServer


class Listener:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []  # {"hub", "path", "event"}
        self.attempts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadedServer(
            Starlette(routes=[Route("/{rest:path}", self._handle, methods=["POST"])])
        )
        self.base = self._server.base

    def __enter__(self) -> Listener:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["rest"]
        hub = path.split("/")[1]
        event = orjson.loads(await request.body())
        with self._lock:
            self.attempts[(hub, event["eventId"])] += 1
            attempt = self.attempts[(hub, event["eventId"])]
        if hub.startswith("slow"):
            await asyncio.sleep(30)
        if hub.startswith("dead"):
            return Response(status_code=500)
        flaky = re.match(r"flaky(\d+)", hub)
        if flaky and attempt <= int(flaky[1]):
            return Response(status_code=503)
        with self._lock:
            self.received.append({"hub": hub, "path": path, "event": event})
        return Response(status_code=204)

    def events(self, hub: str, event_type: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                r["event"]
                for r in self.received
                if r["hub"] == hub and (event_type is None or r["event"]["eventType"] == event_type)
            ]

    def wait_for(self, hub: str, count: int, event_type: str | None = None, seconds: float = 15):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = self.events(hub, event_type)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{hub}: {len(self.events(hub, event_type))} of {count} events")
