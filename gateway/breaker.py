"""A circuit breaker per back end: stop calling one that keeps failing, and say so at once.

Closed, it lets every call through and counts outcomes: failures in a row, and the
failure ratio over a sliding window. Past either bound it opens: calls are refused
without touching the back end (the caller answers 503 with `Retry-After`) until the
cool-down ends. Then it is half-open: a few probe calls go through at once; as many
successes close it, one failure opens it again for another cool-down.

Written here rather than taken from a library: the asyncio-native ones (aiobreaker,
purgatory, aiocircuitbreaker) count consecutive failures only and admit one probe, and
pybreaker's async path needs Tornado. This is a state machine of a few counters, driven
by the caller (`admit` before a call, `record` after), with no loop and no timer task.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from gateway.config import BreakerSettings

log = structlog.get_logger("gateway.breaker")

State = Literal["closed", "open", "half-open"]


class BreakerOpen(Exception):
    """The breaker refused a call; `retry_after` is the rest of the cool-down, in seconds."""

    def __init__(self, backend: str, retry_after: float, last_error: str | None) -> None:
        self.backend = backend
        self.retry_after = retry_after
        self.last_error = last_error
        super().__init__(f"circuit of back end {backend!r} is open")


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """What `/ready` shows of a breaker."""

    state: State
    last_error: str | None
    #: Seconds since the last failure (None: none yet).
    last_error_age: float | None
    consecutive_failures: int


class CircuitBreaker:
    def __init__(
        self,
        backend: str,
        settings: BreakerSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self._clock = clock
        self._state: State = "closed"
        self._opened_at = 0.0
        self._consecutive = 0
        self._window: deque[tuple[float, bool]] = deque()  # (when, failed)
        self._window_failures = 0
        self._probes = 0  # probe calls in flight while half-open
        self._probe_successes = 0
        self._last_error: str | None = None
        self._last_error_at: float | None = None

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() >= self._opened_at + self._cool_down():
            self._state = "half-open"
            self._probes = self._probe_successes = 0
        return self._state

    def status(self) -> BreakerStatus:
        age = None if self._last_error_at is None else self._clock() - self._last_error_at
        return BreakerStatus(self.state, self._last_error, age, self._consecutive)

    def retry_after(self) -> int:
        """Whole seconds until it may let a call through again (at least 1)."""
        left = self._opened_at + self._cool_down() - self._clock()
        return max(1, math.ceil(left))

    def check(self) -> None:
        """Refuse at once while open; admits nothing (see `admit`)."""
        state = self.state
        if state == "open" or (
            state == "half-open" and self._probes >= self.settings.half_open_probes
        ):
            raise BreakerOpen(self.backend, self.retry_after(), self._last_error)

    def admit(self) -> bool:
        """Let one call through or raise `BreakerOpen`; True when it is a half-open probe.

        Every admitted call must end in `record` (or `abandon` when it never ran).
        """
        self.check()
        if self._state == "half-open":
            self._probes += 1
            return True
        return False

    def abandon(self, probe: bool) -> None:
        """An admitted call that ended without an outcome (cancelled)."""
        if probe and self._state == "half-open":
            self._probes = max(0, self._probes - 1)

    def record(self, probe: bool, failure: str | None) -> None:
        """The outcome of an admitted call: None for success, else what went wrong."""
        now = self._clock()
        if failure is not None:
            self._last_error, self._last_error_at = failure, now
            self._consecutive += 1
        else:
            self._consecutive = 0
        if probe:
            self._probes = max(0, self._probes - 1)
        if self._state == "half-open":
            if failure is not None:
                self._open(now)
            elif probe:
                self._probe_successes += 1
                if self._probe_successes >= self.settings.half_open_probes:
                    self._close()
            return
        if self._state == "open":
            return  # a call admitted before it opened: already counted as down
        self._count(now, failure is not None)
        if self._consecutive >= self.settings.consecutive_failures or self._ratio_exceeded():
            self._open(now)

    def _count(self, now: float, failed: bool) -> None:
        window = self._window
        window.append((now, failed))
        self._window_failures += failed
        horizon = now - self.settings.window_seconds
        while window and window[0][0] < horizon:
            _, old = window.popleft()
            self._window_failures -= old

    def _ratio_exceeded(self) -> bool:
        calls = len(self._window)
        if calls < self.settings.min_calls:
            return False
        return self._window_failures / calls >= self.settings.failure_ratio

    def _cool_down(self) -> float:
        return self.settings.cool_down_seconds

    def _open(self, now: float) -> None:
        if self._state != "open":
            log.warning(
                "breaker_opened",
                backend=self.backend,
                cool_down_seconds=self._cool_down(),
                detail=self._last_error,
            )
        self._state = "open"
        self._opened_at = now
        self._probes = self._probe_successes = 0

    def _close(self) -> None:
        log.info("breaker_closed", backend=self.backend)
        self._state = "closed"
        self._consecutive = 0
        self._window.clear()
        self._window_failures = 0
        self._probes = self._probe_successes = 0
