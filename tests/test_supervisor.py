"""Background work under `supervise`: a crash is logged and the work started again."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from gateway.supervisor import start_supervised, supervise


def test_a_crashing_task_is_logged_and_restarted_until_it_finishes() -> None:
    runs: list[int] = []

    async def work() -> None:
        runs.append(len(runs))
        await asyncio.sleep(0)
        if len(runs) < 3:
            raise RuntimeError(f"crash {len(runs)}")

    with capture_logs() as logs:
        asyncio.run(supervise(work, "flaky", first_pause=0.01, max_pause=0.02))
    assert runs == [0, 1, 2]
    crashes = [e for e in logs if e["event"] == "background_task_crashed"]
    assert [e["crashes"] for e in crashes] == [1, 2]
    assert all(e["task"] == "flaky" and e["log_level"] == "error" for e in crashes)
    assert all(e.get("exc_info") for e in crashes)  # with the traceback
    assert logs[-1]["event"] == "background_task_finished"


def test_a_supervised_task_stops_when_cancelled_even_between_restarts() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def work() -> None:
            started.set()
            raise ValueError("always")

        task = start_supervised(work, "doomed", first_pause=10, max_pause=10)
        await started.wait()
        await asyncio.sleep(0.01)  # now pausing before the restart
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with capture_logs() as logs:
        asyncio.run(main())
    assert [e["event"] for e in logs] == ["background_task_crashed"]
