"""Retry policy as data plus pure functions."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from muxproxy.settings import JobSettings


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


@dataclass(frozen=True)
class RetryPolicy:
    """How a job tries again. A transient upstream error is retried until
    ``max_attempts`` attempts have failed, ``base`` x 1, 2, 4 ... seconds apart up to
    ``cap``, spread by +/- ``jitter``; a job the upstream runs is polled every
    ``poll_initial`` x 1.5**n seconds up to ``poll_cap``. An upstream's
    ``Retry-After`` makes a wait longer, never shorter (a retry's stays within ``cap``)."""

    max_attempts: int
    base: float
    cap: float
    poll_initial: float
    poll_cap: float
    jitter: float = 0.2

    @classmethod
    def from_settings(cls, jobs: JobSettings) -> RetryPolicy:
        """The defaults live in the settings; the jitter is the gateway's own."""
        return cls(max_attempts=jobs.max_attempts, base=jobs.retry_base_seconds,
                   cap=jobs.retry_cap_seconds, poll_initial=jobs.poll_initial_seconds,
                   poll_cap=jobs.poll_cap_seconds)


def next_delay(policy: RetryPolicy, attempt: int, retry_after: float | None = None,
               rand: Callable[[], float] = random.random) -> float | None:
    """Seconds before trying again once ``attempt`` attempts (1-based) have failed,
    or None: they are all spent, give up (or fall back to the next route)."""
    if attempt >= policy.max_attempts:
        return None
    delay = max(retry_after or 0.0,
                backoff(attempt, policy.base, policy.cap, policy.jitter, rand))
    return min(delay, policy.cap)


def next_poll(policy: RetryPolicy, polls: int, retry_after: float | None = None) -> float:
    """Seconds until poll number ``polls + 1`` of a job the upstream runs."""
    return max(retry_after or 0.0, poll_delay(polls, policy.poll_initial, policy.poll_cap))


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
