"""The one wrapper every back-end call passes through: deadline, timing, error translation.

A call gets its own timeout, cut to what is left of the incoming request's deadline
(gateway/request_scope.py), so all the calls of one request share one end-to-end
deadline. Back-end failures leave as TMF errors; those that mean the back end could not
answer (unreachable, reset, timed out, broken reply, breaker open, too busy) are
`BackendDown`, which the read cache may answer with a stale copy and a partial
federated list may leave out. Reads add retries, a breaker and a bulkhead around the
same translation (gateway/resilience.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from time import perf_counter

import structlog

from adapters.base import BackendError
from gateway.errors import ApiError
from gateway.request_scope import remaining_seconds
from mappings.errors import RecordMappingError

log = structlog.get_logger("gateway.backend")


@dataclass(slots=True)
class BackendTime:
    seconds: float = 0.0


#: Time spent waiting on back ends during the current request (set by the log middleware).
backend_time: ContextVar[BackendTime | None] = ContextVar("backend_time", default=None)


class BackendDown(ApiError):
    """The back end could not give an answer: 502, 503 (with `Retry-After`) or 504."""

    def __init__(
        self,
        backend: str,
        status: int,
        reason: str,
        message: str,
        *,
        code: str,
        retry_after: int | None = None,
    ) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(status, reason, message, code=code, headers=headers)
        self.backend = backend


class CallTimedOut(BackendError):
    """A call ran out of time: its own timeout, or the request's deadline."""

    def __init__(self, backend: str, seconds: float) -> None:
        super().__init__(f"back end {backend!r}: no answer within {seconds:g} s", status=504)
        self.seconds = seconds


def call_timeout(timeout: float) -> float:
    """A call's own timeout, cut to what is left of the request's deadline (never < 0)."""
    left = remaining_seconds()
    return timeout if left is None else max(0.0, min(timeout, left))


def add_backend_time(seconds: float) -> None:
    spent = backend_time.get()
    if spent is not None:
        spent.seconds += seconds


def timeout_error(backend: str, seconds: float) -> BackendDown:
    log.warning("backend_timeout", backend=backend, timeout_seconds=seconds)
    within = f"within {seconds:g} s" if seconds > 0 else "before the request's deadline"
    return BackendDown(
        backend,
        504,
        "Back end timeout",
        f"The billing back end {backend!r} did not answer {within}",
        code="BACKEND_TIMEOUT",
    )


def backend_error(backend: str, exc: BackendError, retry_after: int = 1) -> BackendDown:
    """A back end's failure as the caller sees it: the status, never the details."""
    if isinstance(exc, CallTimedOut):
        return timeout_error(backend, exc.seconds)
    log.error("backend_error", backend=backend, detail=exc.reason)
    unavailable = exc.status == 503
    # An adapter may give a short text meant for callers (a SOAP Fault's, shortened).
    summary = getattr(exc, "summary", None)
    said = f": {summary}" if isinstance(summary, str) and summary else ""
    return BackendDown(
        backend,
        exc.status,
        "Back end unavailable" if unavailable else "Back end error",
        f"The billing back end {backend!r} failed{said}; the gateway log has the details",
        code="BACKEND_ERROR",
        retry_after=retry_after if unavailable else None,
    )


def mapping_error(backend: str, exc: RecordMappingError) -> ApiError:
    log.error("backend_reply_mismatch", backend=backend, field=exc.field, detail=exc.reason)
    return ApiError(
        502,
        "Back-end reply does not fit its mapping",
        f"Back end {backend!r} returned data the mapping cannot read at {exc.field!r}",
        code="BACKEND_MAPPING_ERROR",
    )


@asynccontextmanager
async def backend_call(backend: str, timeout: float) -> AsyncIterator[None]:
    """Run a block of back-end work under a deadline; failures become TMF errors."""
    started = perf_counter()
    limit = call_timeout(timeout)
    try:
        async with asyncio.timeout(limit):
            yield
    except TimeoutError:
        raise timeout_error(backend, limit) from None
    except BackendError as exc:
        raise backend_error(backend, exc) from None
    except RecordMappingError as exc:
        raise mapping_error(backend, exc) from None
    finally:
        add_backend_time(perf_counter() - started)
