"""Retry policy as data plus pure functions."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime


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


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` asks us to wait: delta-seconds or an HTTP date
    (``now`` is the clock's, in seconds since the epoch). Decimals are taken, as
    APIs send them (OpenAI's ``retry-after-ms`` too); anything else is None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
