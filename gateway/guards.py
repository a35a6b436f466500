"""HTTP-level guards: what is refused before any route runs, and what every answer carries.

Before a route: an oversized URL (414), header block (431) or declared body (413, without
reading it), a control character in the path (400), a path segment longer than any id
(404), and a body that is not JSON where the API takes JSON (415: a cross-site form can
post `text/plain` or form bodies without a CORS preflight). While a route reads: a body
streamed (chunked) past the limit is cut off with a 413. Every refusal is a TMF Error.

Every response gets `X-Content-Type-Options: nosniff`, and `Cache-Control: no-store` (the
data is the caller's) unless it says otherwise: reads served through the read cache carry
`private, max-age` (gateway/routes.py); errors, writes, hubs and the rest stay no-store.
CORS is off unless origins are listed; then Starlette's CORSMiddleware answers preflights
and marks responses for those origins only.

This runs on every request, cache hits included, so it is written to cost little: one
wrapper of `send`, and the body counted only when the request has one.

What uvicorn refuses before the application never reaches this module: a malformed
request line, a raw NUL or space in the target, a method its parser (llhttp, through
httptools) does not know such as `FOO`, a URL over 64 KiB. uvicorn answers those with a
plain-text 400 and has no option to change that body; its httptools parser has no header
size option either (`h11_max_incomplete_event_size` applies to h11 only), so an oversized
header block is read by uvicorn and then refused here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import SAFETY_HEADERS, ApiError, clip, error_response
from gateway.limits import DEFAULT_LIMITS, Limits, limits_in_effect
from gateway.patch import JSON, PATCH_TYPES, media_type
from gateway.resources import API_PREFIX

_SAFETY_RAW = tuple((k.lower().encode(), v.encode()) for k, v in SAFETY_HEADERS.items())
_SAFETY_NAMES = frozenset(name for name, _ in _SAFETY_RAW)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_BODILESS = frozenset({"GET", "HEAD"})

#: What a browser on an allowed origin may send and read (when CORS is on).
CORS_METHODS = ("GET", "POST", "PATCH", "DELETE")
CORS_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "X-Request-ID",
)
CORS_EXPOSED_HEADERS = (
    "ETag",
    "Age",
    "X-Cache",
    "Location",
    "X-Total-Count",
    "X-Result-Count",
    "X-Request-ID",
)


class GuardMiddleware:
    """Pure ASGI middleware enforcing `limits`; `cors_origins` lists the allowed origins."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Limits = DEFAULT_LIMITS,
        cors_origins: Sequence[str] = (),
        allowed_hosts: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.limits = limits
        #: The defaults are in effect outside any `limits_in_effect`: no need to set them.
        self._own_limits = limits != DEFAULT_LIMITS
        self.hosts = frozenset(h.lower() for h in allowed_hosts)
        self._cors: ASGIApp | None = None
        if cors_origins:
            # Outside the checks: preflights are answered, refusals carry CORS headers.
            self._cors = _TmfCorsMiddleware(
                self._guarded,
                allow_origins=list(cors_origins),
                allow_methods=CORS_METHODS,
                allow_headers=CORS_REQUEST_HEADERS,
                expose_headers=CORS_EXPOSED_HEADERS,
                allow_credentials=False,
                max_age=600,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._own_limits:
            with limits_in_effect(self.limits):
                await self._checked(scope, receive, send)
        elif self._cors is None:
            await self._guarded(scope, receive, send)
        else:
            await self._checked(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._cors is None:
            await self._guarded(scope, receive, send)
        else:  # preflight answers get the safety headers too (adding them is idempotent)
            await self._cors(scope, receive, _safe(send))

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = refusal_for(scope, self.limits)
        if refusal is None and self.hosts:
            refusal = self._host_refusal(scope)
        if refusal is not None:
            await error_response(refusal)(scope, receive, _safe(send))
            return
        started = False

        async def send_safe(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = _with_safety_headers(message)
            await send(message)

        if scope["method"] not in _BODILESS and _has_body(scope["headers"]):
            receive = _counting(receive, self.limits.body_bytes)  # (no route reads a GET's)
        try:
            await self.app(scope, receive, send_safe)
        except ApiError as error:  # a body cut off outside a route's error handling
            if started or error.status != 413:
                raise
            await error_response(error)(scope, receive, send_safe)

    def _host_refusal(self, scope: Scope) -> ApiError | None:
        """Hrefs and Locations are built from the Host header: only configured hosts."""
        if not self.hosts:
            return None
        given = _header(list(scope.get("headers", ())), b"host") or ""
        host = given.rsplit(":", 1)[0] if not given.endswith("]") else given
        if host.lower() in self.hosts:
            return None
        return ApiError(
            400, "Invalid host", f"Host {clip(given)!r} is not served here", code="INVALID_HOST"
        )


class _TmfCorsMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as a TMF Error too."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        detail = bytes(response.body).decode("utf-8", "replace")
        error = ApiError(
            response.status_code, "CORS preflight refused", detail, code="CORS_REFUSED"
        )
        return error_response(error)


def refusal_for(scope: Scope, limits: Limits) -> ApiError | None:
    """Why the request is refused before routing, as a TMF error; None when it may pass."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    url_bytes = len(raw_path) + len(scope.get("query_string", b""))
    if url_bytes > limits.url_bytes:
        return ApiError(
            414,
            "URI too long",
            f"The path and query take {url_bytes} bytes; at most {limits.url_bytes} are read",
            code="URI_TOO_LONG",
        )
    headers: Sequence[tuple[bytes, bytes]] = scope.get("headers", ())
    header_bytes = sum(map(len, chain.from_iterable(headers)))
    if len(headers) > limits.header_count or header_bytes > limits.header_bytes:
        return ApiError(
            431,
            "Request header fields too large",
            f"At most {limits.header_count} headers of {limits.header_bytes} bytes in all"
            f" are read (got {len(headers)}, {header_bytes} bytes)",
            code="HEADERS_TOO_LARGE",
            headers={"Connection": "close"},
        )
    path: str = scope["path"]
    # (An ASCII path that is printable has no control character: checked in C, no regex.)
    if not (path.isascii() and path.isprintable()) and _CONTROL.search(path):
        return ApiError(
            400,
            "Invalid path",
            f"The path holds a control character: {clip(ascii(path))}",
            code="INVALID_PATH",
        )
    if len(path) > limits.segment_chars and max(map(len, path.split("/"))) > limits.segment_chars:
        return ApiError(404, "Not found", f"No resource at {clip(path)}")
    declared = _header(headers, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.body_bytes:
        return _too_large(limits.body_bytes)
    method: str = scope["method"]
    if method not in _BODY_METHODS:
        return None
    root: str = scope.get("root_path", "")
    route_path = path[len(root) :] if root and path.startswith(root) else path
    if route_path.startswith(API_PREFIX + "/") and _has_body(headers):
        accepted = PATCH_TYPES if method == "PATCH" else (JSON,)
        kind = media_type(_header(headers, b"content-type"))
        if kind not in accepted:
            return ApiError(
                415,
                "Unsupported media type",
                f"{method} takes {', '.join(accepted)}; got {clip(kind) or 'no Content-Type'}",
                code="UNSUPPORTED_MEDIA_TYPE",
            )
    return None


def _safe(send: Send) -> Send:
    async def send_safe(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = _with_safety_headers(message)
        await send(message)

    return send_safe


def _counting(receive: Receive, limit: int) -> Receive:
    """`receive`, refusing (413) a body that grows past `limit` bytes while it streams in."""
    received = 0

    async def receive_counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return receive_counted


def _too_large(limit: int) -> ApiError:
    # Closing the connection spares reading (and discarding) the rest of the body.
    return ApiError(
        413,
        "Request body too large",
        f"A request body may take at most {limit} bytes",
        code="PAYLOAD_TOO_LARGE",
        headers={"Connection": "close"},
    )


def _has_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a body follows the headers (HTTP/1.1: a length other than 0, or chunks)."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1").strip()
    return None


def _with_safety_headers(message: Message) -> Message:
    headers = message.get("headers", ())
    present = dict(headers)  # names as sent: lower case (Starlette, ASGI servers)
    if _SAFETY_NAMES.issubset(present):  # the read routes send them already
        return message
    missing = [(name, value) for name, value in _SAFETY_RAW if name not in present]
    return {**message, "headers": [*headers, *missing]}
