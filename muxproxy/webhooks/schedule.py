"""When to try a callback again: policy as data (``WebhookSettings``) plus pure
functions, after Svix and the Standard Webhooks guidance.

- 2xx delivers. 410 Gone stops at once. Anything else, 3xx included (redirects are
  not followed), is retried.
- The quick phase waits ``quick_backoff_seconds`` x 1, 2, 4 ... between its
  attempts; the background phase starts at ``background_interval_seconds`` and
  doubles up to ``background_max_interval_seconds``. Every wait is jittered.
- A 429 or 5xx may ask for more time with ``Retry-After``; it is honoured up to
  ``retry_after_max_seconds``, never sooner than the schedule.
- Nothing is scheduled past the retry window (it ends ``retry_window_seconds``
  after the round's first attempt), except one last try at its very end.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from enum import StrEnum

from muxproxy.pipeline.backoff import backoff

# Re-exported: the relay reads a receiver's Retry-After as the providers do.
from muxproxy.pipeline.backoff import parse_retry_after as parse_retry_after
from muxproxy.settings import WebhookSettings


class Outcome(StrEnum):
    DELIVERED = "delivered"
    GONE = "gone"
    RETRY = "retry"


def classify(status: int | None) -> Outcome:
    if status is not None and 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    return Outcome.RETRY


def honours_retry_after(status: int | None) -> bool:
    return status is not None and (status == 429 or 500 <= status < 600)


def retry_delay(round_attempt: int, settings: WebhookSettings,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds between attempt ``round_attempt`` (1-based, in this round) and the next."""
    quick = settings.quick_attempts
    if round_attempt <= quick:
        return backoff(round_attempt, settings.quick_backoff_seconds, math.inf,
                       settings.jitter, rand)
    return backoff(round_attempt - quick, settings.background_interval_seconds,
                   settings.background_max_interval_seconds, settings.jitter, rand)


def next_attempt_at(round_attempt: int, now: int, window_ends_at: int,
                    settings: WebhookSettings, retry_after: float | None = None,
                    rand: Callable[[], float] = random.random) -> int | None:
    """When (ms) to try again after a failed attempt, or None to give up."""
    delay = retry_delay(round_attempt, settings, rand)
    if retry_after is not None:
        # Spread upwards only: never sooner than the receiver asked.
        asked = min(retry_after, settings.retry_after_max_seconds)
        delay = max(delay, asked * (1 + settings.jitter * rand()))
    at = now + math.ceil(delay * 1000)
    if at <= window_ends_at:
        return at
    if now < window_ends_at:
        return window_ends_at
    return None
