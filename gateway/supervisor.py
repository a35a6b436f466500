"""Background work that cannot die silently: a crash is logged and the work restarted.

A task that raises ends, and nothing else notices: requests then wait forever in a state
no one will change. Every long-running task of the gateway runs under `supervise`, which
logs the crash with its traceback and starts the work again after a short, growing,
jittered pause (so a crash that repeats at once does not spin).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from time import monotonic
from typing import Any

import structlog

from gateway.backoff import backoff_seconds

log = structlog.get_logger("gateway.supervisor")

Work = Callable[[], Coroutine[Any, Any, None]]

#: A run that lasted this long before crashing starts the pauses from the shortest again.
_STEADY_SECONDS = 60.0


async def supervise(
    work: Work, name: str, *, first_pause: float = 0.5, max_pause: float = 30.0
) -> None:
    """Run `work()` until cancelled, restarting it after each crash.

    Work that returns has finished (it is not restarted); cancellation is passed on.
    """
    crashes = 0
    while True:
        started = monotonic()
        try:
            await work()
        except Exception:
            crashes = 1 if monotonic() - started >= _STEADY_SECONDS else crashes + 1
            pause = backoff_seconds(min(crashes, 32), first_pause, max_pause)
            log.exception("background_task_crashed", task=name, crashes=crashes, restart_in=pause)
            await asyncio.sleep(pause)
            log.info("background_task_restarted", task=name, crashes=crashes)
            continue
        log.info("background_task_finished", task=name)
        return


def start_supervised(work: Work, name: str, **pauses: float) -> asyncio.Task[None]:
    """`supervise(work)` as a task; its own end, should anything escape, is logged too."""
    task = asyncio.create_task(supervise(work, name, **pauses), name=name)
    task.add_done_callback(_report_end)
    return task


def _report_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("background_task_lost", task=task.get_name(), error=repr(error))
