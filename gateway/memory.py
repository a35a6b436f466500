"""Giving memory back after a burst: collect the burst's garbage, return free pages.

A burst (hundreds of requests at once, many failing against a hung back end) leaves
reference cycles behind (each exception holds its traceback, whose frames hold the
exception) that the cyclic collector reaches only at its next full collection, and
the C allocator keeps freed pages for reuse. Both make the process look as large as at
the peak long after it. So once the gateway is idle again after a burst, it runs one
full collection and asks glibc to return free pages (`malloc_trim(0)`, which releases
free memory inside the heap too, not only at its top; where there is no glibc it is
skipped). It runs at most once per burst, after requests stop, so it never adds to a
request's time.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
from collections.abc import Callable

import structlog

log = structlog.get_logger("gateway.memory")

#: Requests in flight at once (or refused for being too many) that make a burst.
BURST_REQUESTS = 64
#: How long the gateway must have been idle before the clean-up runs.
QUIET_SECONDS = 0.5


def _malloc_trim() -> Callable[[], None] | None:
    """glibc's `malloc_trim(0)`, or None where the C library has none (musl, macOS)."""
    if os.environ.get("GATEWAY_MALLOC_TRIM", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0) and None


class BurstRecovery:
    """Told when the gateway is idle again; cleans up, a little later, after a burst."""

    def __init__(self, burst: int = BURST_REQUESTS, quiet_seconds: float = QUIET_SECONDS) -> None:
        self.burst = burst
        self.quiet_seconds = quiet_seconds
        self._trim = _malloc_trim()
        self._pending: asyncio.TimerHandle | None = None
        self.cleanups = 0

    def idle(self, peak: int) -> None:
        """No request is in flight any more; at most `peak` were at once since last idle."""
        if peak >= self.burst and self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(
                self.quiet_seconds, self._clean_up
            )

    def _clean_up(self) -> None:
        self._pending = None
        collected = gc.collect()
        if self._trim is not None:
            self._trim()
        self.cleanups += 1
        log.info("memory_returned_after_burst", collected_objects=collected)
