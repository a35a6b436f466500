"""Reads that shield the back ends and the caller: retries, breaker, bulkhead, deadline.

Every read of a back end (`ResourceReader.list/get`) goes through its `BackendGuard`:

- each attempt is refused at once while the back end's breaker is open (gateway/breaker.py),
  then takes a slot of the back end's bulkhead: a bounded number of calls at once, a
  bounded number waiting, for a bounded time; beyond, a 503 with `Retry-After` at once;
- the attempt runs under the call's timeout cut to the request's deadline;
- failures that may pass (BackendError 503/504: unreachable, reset, timed out; the
  statuses are configurable) are retried by tenacity with exponential backoff and full
  jitter, honouring a `retry_after` hint on the error, never past the deadline, and only
  while the back end's retry budget allows (Envoy's: retries in flight at most 20 % of
  the reads in flight to it, or 3), so retries cannot multiply an outage;
- a reply that does not fit the mapping, or any other error, is not retried;
- each attempt, refused or made, is reported with its outcome and time to the metrics
  (gateway/metrics.py) when the guard has an observer.

Writes are not retried here: they are not idempotent (gateway/writes.py calls
`backend_call` once per step, under the same deadline).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Any, TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_random_exponential

from adapters.base import BackendError
from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.calls import (
    BackendDown,
    CallTimedOut,
    add_backend_time,
    backend_error,
    call_timeout,
    mapping_error,
)
from gateway.config import BackendPolicy, BulkheadSettings, ResilienceSettings, RetrySettings
from gateway.metrics import CallObserver
from gateway.request_scope import remaining_seconds
from mappings.errors import RecordMappingError

T = TypeVar("T")
log = structlog.get_logger("gateway.resilience")

#: Time an attempt needs at the least: no retry starts with less left before the deadline.
MIN_ATTEMPT_SECONDS = 0.01


class BulkheadFull(Exception):
    def __init__(self, backend: str) -> None:
        super().__init__(f"back end {backend!r}: all call slots busy")


class RetryBudgetSpent(Exception):
    """A retry the budget did not allow: the last failure stands."""

    def __init__(self, last: BackendError) -> None:
        super().__init__(str(last))
        self.last = last


class Bulkhead:
    """At most `max_concurrent` calls at once; `max_waiting` may wait `max_wait_seconds`."""

    def __init__(self, backend: str, settings: BulkheadSettings) -> None:
        self.backend = backend
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self.waiting = 0
        self.in_use = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked():
            wait = self.settings.max_wait_seconds
            left = remaining_seconds()
            if left is not None:
                wait = min(wait, left)
            if self.waiting >= self.settings.max_waiting or wait <= 0:
                raise BulkheadFull(self.backend)
            self.waiting += 1
            try:
                async with asyncio.timeout(wait):
                    await self._slots.acquire()
            except TimeoutError:
                raise BulkheadFull(self.backend) from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._slots.release()


class RetryBudget:
    """Envoy's retry budget: retries in flight <= max(minimum, ratio x reads in flight)."""

    def __init__(self, ratio: float, minimum: int) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self.reads = 0  # logical reads in flight (first attempts, backoffs and retries)
        self.retries = 0  # retry attempts in flight

    def allowed(self) -> int:
        return max(self.minimum, int(self.ratio * self.reads))

    def take(self) -> bool:
        if self.retries >= self.allowed():
            return False
        self.retries += 1
        return True

    def give_back(self) -> None:
        self.retries -= 1


class _StopAtDeadline(stop_base):
    """Stop when the next attempt would start too close to the request's deadline."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        left = remaining_seconds()
        return left is not None and left - retry_state.upcoming_sleep < MIN_ATTEMPT_SECONDS


class _Backoff(wait_base):
    """Full-jitter exponential backoff, or longer when the failure carries `retry_after`."""

    def __init__(self, settings: RetrySettings) -> None:
        self._jitter = wait_random_exponential(
            multiplier=settings.base_seconds, max=settings.max_seconds
        )

    def __call__(self, retry_state: RetryCallState) -> float:
        delay: float = self._jitter(retry_state)
        outcome = retry_state.outcome
        hint = getattr(outcome.exception(), "retry_after", None) if outcome is not None else None
        if isinstance(hint, int | float) and hint > delay:
            return float(hint)
        return delay


class BackendGuard:
    """The policy objects of one back end, and the guarded read through them."""

    def __init__(
        self, backend: str, policy: BackendPolicy, observe: CallObserver | None = None
    ) -> None:
        self.backend = backend
        self.observe = observe
        self.policy = policy
        self.breaker = CircuitBreaker(backend, policy.breaker)
        self.bulkhead = Bulkhead(backend, policy.bulkhead)
        self.budget = RetryBudget(policy.retry.budget_ratio, policy.retry.budget_min)
        self._stop = stop_after_attempt(policy.retry.attempts) | _StopAtDeadline()
        self._wait = _Backoff(policy.retry)
        self._retry_on = frozenset(policy.retry.on_status)
        #: Attempts that reached the back end (for `/ready`, tests and benchmarks).
        self.attempts = 0

    def _retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, BackendError) and exc.status in self._retry_on

    async def read(
        self, work: Callable[[], Awaitable[T]], timeout: float, operation: str = "read"
    ) -> T:
        """Run an idempotent read; a failure leaves as a TMF error (`BackendDown` mostly).

        `operation` (`get`, `list`) names the read in the metrics.
        """
        started = perf_counter()
        self.budget.reads += 1
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._retryable),
            stop=self._stop,
            wait=self._wait,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return await retrying(_Attempts(self, work, timeout, operation))
        except BackendError as exc:
            raise self._failure(exc) from None
        except RetryBudgetSpent as exc:
            log.warning("retry_budget_spent", backend=self.backend, allowed=self.budget.allowed())
            raise self._failure(exc.last) from None
        except BreakerOpen as exc:
            raise BackendDown(
                self.backend,
                503,
                "Back end unavailable",
                f"The billing back end {self.backend!r} is failing and is not called for now;"
                f" try again in {exc.retry_after:g} s",
                code="BACKEND_CIRCUIT_OPEN",
                retry_after=int(exc.retry_after),
            ) from None
        except BulkheadFull:
            log.warning("backend_busy", backend=self.backend)
            raise BackendDown(
                self.backend,
                503,
                "Back end busy",
                f"The billing back end {self.backend!r} has as many calls as it may take;"
                " try again shortly",
                code="BACKEND_BUSY",
                retry_after=self.policy.bulkhead.retry_after_seconds,
            ) from None
        except RecordMappingError as exc:
            raise mapping_error(self.backend, exc) from None
        finally:
            self.budget.reads -= 1
            add_backend_time(perf_counter() - started)

    def _failure(self, exc: BackendError) -> BackendDown:
        retry_after = self.breaker.retry_after() if self.breaker.state == "open" else 1
        return backend_error(self.backend, exc, retry_after)

    async def attempt(
        self, work: Callable[[], Awaitable[T]], timeout: float, operation: str = "read"
    ) -> T:
        """One call: breaker, bulkhead slot, timeout; the outcome goes to the breaker."""
        observe = self.observe
        if observe is None:
            return await self._attempt(work, timeout)
        started = perf_counter()
        outcome = "ok"
        try:
            return await self._attempt(work, timeout)
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            observe(operation, outcome, perf_counter() - started)

    async def _attempt(self, work: Callable[[], Awaitable[T]], timeout: float) -> T:
        self.breaker.check()
        limit = call_timeout(timeout)
        if limit <= 0:
            raise CallTimedOut(self.backend, 0)  # the request's deadline has passed
        async with self.bulkhead.slot():
            probe = self.breaker.admit()
            limit = call_timeout(timeout)  # the wait for a slot came out of the deadline
            self.attempts += 1
            try:
                async with asyncio.timeout(limit):
                    result = await work()
            except TimeoutError:
                self.breaker.record(probe, f"no answer within {limit:g} s")
                raise CallTimedOut(self.backend, limit) from None
            except BackendError as exc:
                # What /ready (no token needed) shows: the class of failure, never the
                # back end's own text (hosts, paths); that goes to the log with the call.
                self.breaker.record(probe, _failure_class(exc))
                raise
            except RecordMappingError:
                self.breaker.record(probe, None)  # it answered: the data is the trouble
                raise
            except BaseException:
                self.breaker.abandon(probe)
                raise
            self.breaker.record(probe, None)
            return result

    def _log_retry(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        log.info(
            "backend_retry",
            backend=self.backend,
            attempt=retry_state.attempt_number,
            status=getattr(exc, "status", None),
            sleep_seconds=round(retry_state.upcoming_sleep, 3),
        )


class _Attempts:
    """The callable tenacity retries: counts attempts and spends the retry budget."""

    def __init__(
        self,
        guard: BackendGuard,
        work: Callable[[], Awaitable[Any]],
        timeout: float,
        operation: str,
    ) -> None:
        self.guard = guard
        self.work = work
        self.timeout = timeout
        self.operation = operation
        self.number = 0
        self.last: BackendError | None = None

    async def __call__(self) -> Any:
        self.number += 1
        budget = self.guard.budget
        retry = self.number > 1
        if retry:
            assert self.last is not None
            if not budget.take():
                raise RetryBudgetSpent(self.last)
        try:
            return await self.guard.attempt(self.work, self.timeout, self.operation)
        except BackendError as exc:
            self.last = exc
            raise
        finally:
            if retry:
                budget.give_back()


class Resilience:
    """The gateway's guards, one per back end, built from the `resilience:` settings."""

    def __init__(
        self,
        settings: ResilienceSettings,
        observer: Callable[[str], CallObserver] | None = None,
    ) -> None:
        self.settings = settings
        #: Gives each back end's guard the function its attempts are reported to.
        self.observer = observer
        self._guards: dict[str, BackendGuard] = {}

    def guard(self, backend: str) -> BackendGuard:
        found = self._guards.get(backend)
        if found is None:
            observe = self.observer(backend) if self.observer is not None else None
            policy = self.settings.policy(backend)
            found = self._guards[backend] = BackendGuard(backend, policy, observe)
        return found

    @property
    def guards(self) -> dict[str, BackendGuard]:
        return dict(self._guards)


def _failure_class(exc: BackendError) -> str:
    """A failure as /ready may tell it to anyone: its kind and status, no details."""
    kind = {503: "unavailable", 504: "no answer in time"}.get(exc.status, "failed")
    return f"{kind} ({exc.status})"


def _outcome(exc: BaseException) -> str:
    """An attempt's failure as a metrics label: a few fixed words."""
    if isinstance(exc, BreakerOpen):
        return "breaker_open"
    if isinstance(exc, BulkheadFull):
        return "busy"
    if isinstance(exc, CallTimedOut):
        return "timeout"
    if isinstance(exc, BackendError):
        return {503: "unavailable", 504: "timeout"}.get(exc.status, "error")
    if isinstance(exc, RecordMappingError):
        return "mapping_error"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"
