"""Retry policy as data plus pure functions."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff(attempt: int, base: float, cap: float, jitter: float = 0.0,
            rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): ``base * 2**(attempt-1)``,
    capped, then spread by +/- ``jitter`` (a fraction) so retries do not stampede."""
    delay = float(min(cap, base * (2.0 ** max(0, attempt - 1))))
    if jitter:
        delay *= 1 + jitter * (2 * rand() - 1)
    return max(0.0, delay)


def poll_delay(polls: int, initial: float, cap: float) -> float:
    """Seconds until poll number ``polls + 1``: starts fast, grows by half each time."""
    return min(cap, initial * (1.5 ** max(0, polls)))
