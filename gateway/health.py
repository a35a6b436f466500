"""`GET /health` and `GET /ready`: for load balancers and orchestrators, outside the TMF API.

`/health` says the process is alive and serving (always 200 while it is). `/ready` says
whether it should get traffic: the gateway store answers (when there is one), and no
back end serving a configured resource has its breaker open or cannot be used yet (a
SOAP back end whose WSDL is still being loaded). It lists each back end's state (the
breaker's closed, open, half-open; or unavailable) and last error, and is 503 when not
ready.
Neither is behind auth: they tell no customer data, and a probe has no token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.config import GatewayConfig
from gateway.resilience import Resilience
from gateway.routes import JSONResponse
from gateway.store import GatewayStore

log = structlog.get_logger("gateway.health")

#: What a health answer says of itself: never cached, never sniffed.
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(slots=True)
class Readiness:
    """What `/ready` checks: the store, and the breakers of the back ends in use."""

    resilience: Resilience
    #: Back end -> the collections it serves.
    serving: Mapping[str, Sequence[str]] = field(default_factory=dict)
    store: GatewayStore | None = None
    store_timeout_seconds: float = 2.0
    #: Back end -> its adapter; one with a `not_ready()` may say it cannot serve yet.
    adapters: Mapping[str, object] = field(default_factory=dict)

    async def report(self) -> tuple[bool, dict[str, Any]]:
        ready = True
        body: dict[str, Any] = {}
        if self.store is not None:
            error = await self._store_error()
            body["store"] = {"status": "up" if error is None else "down", "error": error}
            ready = ready and error is None
        backends: dict[str, Any] = {}
        for name in sorted(self.serving):
            status = self.resilience.guard(name).breaker.status()
            age = status.last_error_age
            unready = self._unready(name)
            backends[name] = {
                "state": status.state if unready is None else "unavailable",
                "serves": list(self.serving[name]),
                "lastError": status.last_error if unready is None else unready,
                "lastErrorAgeSeconds": None if age is None or unready else round(age, 1),
            }
            ready = ready and status.state != "open" and unready is None
        body["backends"] = backends
        return ready, {"status": "ready" if ready else "notReady", **body}

    def _unready(self, backend: str) -> str | None:
        """Why the back end's adapter cannot serve yet (its own short words), or None."""
        not_ready = getattr(self.adapters.get(backend), "not_ready", None)
        return not_ready() if callable(not_ready) else None

    async def _store_error(self) -> str | None:
        assert self.store is not None
        try:
            async with asyncio.timeout(self.store_timeout_seconds):
                await self.store.ping()
        except TimeoutError:
            return f"no answer within {self.store_timeout_seconds:g} s"
        except Exception as exc:  # any failure means not ready; the log has the details
            log.warning("store_not_ready", detail=str(exc))
            return type(exc).__name__
        return None


def serving(config: GatewayConfig) -> dict[str, list[str]]:
    """Back end -> the collections it serves (what `/ready` watches)."""
    found: dict[str, list[str]] = {}
    for collection, binding in config.resources.items():
        for route in binding if isinstance(binding, list) else [binding]:
            found.setdefault(route.backend, []).append(collection)
    return found


def health_routes(readiness: Readiness | None) -> list[Route]:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "up"}, headers=_NO_STORE)

    async def ready(request: Request) -> Response:
        if readiness is None:
            return JSONResponse({"status": "ready", "backends": {}}, headers=_NO_STORE)
        ok, body = await readiness.report()
        return JSONResponse(body, status_code=200 if ok else 503, headers=_NO_STORE)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
    ]
