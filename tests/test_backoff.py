"""Backoff arithmetic for stored retry schedules."""

from __future__ import annotations

from gateway.backoff import backoff_seconds


def test_doubles_from_the_base_within_jitter_and_stops_at_the_cap() -> None:
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (20, 60.0)]:
        delays = [backoff_seconds(attempt, 1.0, 60.0) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 10  # jittered, not constant
