"""The one wrapper every back-end call passes through: deadline, timing, error translation.

Keeping this in one place is what lets retries, breakers and caching be added later
without touching each adapter.
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
from mappings.errors import RecordMappingError

log = structlog.get_logger("gateway.backend")


@dataclass(slots=True)
class BackendTime:
    seconds: float = 0.0


#: Time spent waiting on back ends during the current request (set by the log middleware).
backend_time: ContextVar[BackendTime | None] = ContextVar("backend_time", default=None)


@asynccontextmanager
async def backend_call(backend: str, timeout: float) -> AsyncIterator[None]:
    """Run a block of back-end work under a deadline; failures become TMF errors."""
    started = perf_counter()
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        log.warning("backend_timeout", backend=backend, timeout_seconds=timeout)
        raise ApiError(
            504,
            "Back end timeout",
            f"The billing back end {backend!r} did not answer within {timeout:g} s",
            code="BACKEND_TIMEOUT",
        ) from None
    except BackendError as exc:
        log.error("backend_error", backend=backend, detail=exc.reason)
        raise ApiError(
            exc.status,
            "Back end unavailable" if exc.status == 503 else "Back end error",
            f"The billing back end {backend!r} failed; the gateway log has the details",
            code="BACKEND_ERROR",
        ) from None
    except RecordMappingError as exc:
        log.error("backend_reply_mismatch", backend=backend, field=exc.field, detail=exc.reason)
        raise ApiError(
            502,
            "Back-end reply does not fit its mapping",
            f"Back end {backend!r} returned data the mapping cannot read at {exc.field!r}",
            code="BACKEND_MAPPING_ERROR",
        ) from None
    finally:
        spent = backend_time.get()
        if spent is not None:
            spent.seconds += perf_counter() - started
