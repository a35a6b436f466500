"""TMF `Error` bodies: the only shape an error ever leaves the gateway in.

A message may quote what the caller sent, but never at full size: `clip` cuts a quoted
value, and `ApiError.body` caps the whole message, so a 5 MB input cannot come back as a
5 MB error. Every error response also says it is not to be sniffed or cached.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from adapters.base import QueryRefused

log = structlog.get_logger("gateway.errors")

#: The most characters of caller input a message quotes (`clip`).
MAX_ECHO = 200
#: The longest `message` an error body carries.
MAX_MESSAGE = 1000
#: Headers on every error response (and, through gateway/guards.py, on every response).
SAFETY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def clip(value: object, limit: int = MAX_ECHO) -> str:
    """`value` as text, cut to `limit` characters (saying how long it was) for messages."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    tail = f"... ({len(text)} characters)"
    if limit <= len(tail):
        return text[:limit]
    return text[: limit - len(tail)] + tail


class ApiError(Exception):
    """An error to answer with a TMF `Error` body and the given HTTP status."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        self.code = code or _default_code(status)
        self.headers = headers or {}
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")

    def body(self) -> dict[str, str]:
        body = {"@type": "Error", "code": self.code, "reason": clip(self.reason, MAX_ECHO)}
        if self.message:
            body["message"] = clip(self.message, MAX_MESSAGE)
        body["status"] = str(self.status)
        return body


def _default_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.upper().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "ERROR"


def bad_request(reason: str, message: str | None = None) -> ApiError:
    return ApiError(400, reason, message, code="INVALID_QUERY")


def not_found(collection: str, ident: str) -> ApiError:
    return ApiError(404, "Resource not found", f"No {collection} with id {clip(ident)!r}")


def error_response(error: ApiError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        media_type="application/json",
        headers={**SAFETY_HEADERS, **error.headers},
    )


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def query_refused_handler(request: Request, exc: Exception) -> Response:
    """A request a back end cannot serve as asked (adapters/base.py): a 4xx."""
    assert isinstance(exc, QueryRefused)
    log.info("query_refused", status=exc.status, detail=exc.reason)
    code = "INVALID_QUERY" if exc.status == 400 else None
    return error_response(ApiError(exc.status, exc.title, exc.message, code=code))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no route, wrong method) as TMF errors."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, "Not found", f"No resource at {clip(request.url.path)}")
    elif exc.status_code == 405:
        allowed = ", ".join(_allowed_methods(request))
        error = ApiError(
            405,
            "Method not allowed",
            f"{clip(request.method, 20)} is not defined on {clip(request.url.path)}"
            f" (allowed: {allowed})",
            headers={"Allow": allowed} if allowed else None,
        )
    else:
        error = ApiError(exc.status_code, exc.detail or "Error")
    return error_response(error)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route offers on this path (one route per operation here)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "\0"})
        if match is Match.PARTIAL and isinstance(route, Route) and route.methods:
            methods |= route.methods
    return sorted(methods)
