"""Exponential backoff with jitter, for retries whose schedule is kept in the store.

On-demand requests and event deliveries are retried across restarts, so the next
attempt's time is stored, not slept on; this is only the arithmetic.
"""

from __future__ import annotations

import random


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Delay before retry number `attempt` (1 = first retry): base x 2^(n-1), capped, jittered."""
    delay: float = min(cap, base * 2 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)
