"""Structured logs: one JSON line per request, and the request-id / error middleware.

The middleware is the outermost layer: it names the request (an incoming `X-Request-ID`
is honoured and echoed back), joins or starts its W3C trace (gateway/tracing.py: the
trace id goes into every log line of the request, `traceparent` and the request id into
its back-end calls), times it and the back-end calls within it, reports it to the
metrics (gateway/metrics.py), and turns any exception that escaped the routes into a
TMF 500 without a stack trace in the reply (the trace goes to the log, where operators
look for it).

A trace is logged without frame locals (structlog's default shows them, and a local may
hold a bearer token or a connection string); request headers are never logged, and a
query parameter named like a credential is logged as `REDACTED`; httpx's own INFO line
per back-end call (its full URL) is left out.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from time import perf_counter
from urllib.parse import unquote_plus

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import Processor

from adapters.base import OUTGOING_HEADERS
from gateway.calls import BackendTime, backend_time
from gateway.errors import ApiError, error_response
from gateway.metrics import GatewayMetrics
from gateway.tracing import outgoing_headers, trace_context

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Query parameters whose values are never written to the log.
SECRET_PARAMETERS = frozenset(
    {
        "access_token",
        "id_token",
        "refresh_token",
        "token",
        "api_key",
        "apikey",
        "password",
        "secret",
        "client_secret",
        "signature",
        "sig",
    }
)
#: The most characters of a path or query string one log line carries.
MAX_LOGGED = 2000

#: Whether the one line per request is written (INFO): `configure_logging` sets it.
_log_requests = True

# Frames as file, line and function only: never their local variables.
_exceptions = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stdout, for our events and for libraries' stdlib logs alike."""
    global _log_requests
    _log_requests = logging.getLevelName(level) <= logging.INFO
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _exceptions],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every back-end call's full URL at INFO: a line per call, and a URL may
    # carry a back end's credentials. Its warnings and errors still come through.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
    structlog.configure(
        processors=[
            *shared,
            _exceptions,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


log = structlog.get_logger("gateway.access")


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming, traceparent, tracestate = _tracing_headers(scope)
        # 128 random bits as 32 hex digits, as `uuid4().hex` gave them, for a fraction of its cost.
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else os.urandom(16).hex()
        trace = trace_context(traceparent, tracestate)
        named = (b"x-request-id", request_id.encode())
        spent = BackendTime()
        token = backend_time.set(spent)
        outgoing = OUTGOING_HEADERS.set(outgoing_headers(trace, request_id))
        structlog.contextvars.bind_contextvars(request_id=request_id, trace_id=trace.trace_id)
        started = perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message = {**message, "headers": [*message.get("headers", ()), named]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled_error", method=scope["method"], path=_clipped(scope["path"]))
            if not response_started:
                error = ApiError(
                    500,
                    "Internal error",
                    f"The gateway failed to process the request (request id {request_id})",
                )
                await error_response(error)(scope, receive, send_with_id)
        finally:
            duration = perf_counter() - started
            if self.metrics is not None:
                self.metrics.observe_request(scope, status, duration)
            if _log_requests:  # built only when written: skipped below INFO
                log.info(
                    "request",
                    method=scope["method"],
                    path=_clipped(scope["path"]),
                    query=logged_query(scope.get("query_string", b"")),
                    status=status,
                    duration_ms=round(duration * 1000, 2),
                    backend_ms=round(spent.seconds * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars(
                "request_id", "trace_id", "subject", "client_id"
            )
            OUTGOING_HEADERS.reset(outgoing)
            backend_time.reset(token)


def logged_query(query_string: bytes) -> str | None:
    """The query string as logged: credential-like parameters redacted, clipped."""
    if not query_string:
        return None
    parts = []
    for part in query_string.decode("latin-1").split("&"):
        name, sep, _ = part.partition("=")
        if sep and unquote_plus(name).strip().lower() in SECRET_PARAMETERS:
            part = f"{name}=REDACTED"
        parts.append(part)
    return _clipped("&".join(parts))


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_LOGGED else f"{text[:MAX_LOGGED]}...({len(text)} chars)"


def _tracing_headers(scope: Scope) -> tuple[str | None, str | None, str | None]:
    """X-Request-ID, traceparent and tracestate, in one pass over the headers.

    Two `traceparent` headers are no valid parent (W3C: discard them): a new trace starts.
    """
    request_id = traceparent = tracestate = None
    parents = 0
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id" and request_id is None:
            request_id = value.decode("latin-1")
        elif key == b"traceparent":
            parents += 1
            traceparent = value.decode("latin-1")
        elif key == b"tracestate" and tracestate is None:
            tracestate = value.decode("latin-1")
    return request_id, traceparent if parents == 1 else None, tracestate
