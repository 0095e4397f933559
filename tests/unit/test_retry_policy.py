"""The job retry policy: data built from settings, and pure functions of it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from muxproxy.pipeline.backoff import RetryPolicy, next_delay, next_poll
from muxproxy.settings import JobSettings

# Without jitter, so each wait is exact.
STEADY = RetryPolicy(max_attempts=5, base=1.0, cap=60.0, poll_initial=1.0, poll_cap=15.0,
                     jitter=0.0)


def attempts(n: int) -> RetryPolicy:
    return replace(STEADY, max_attempts=n)


@pytest.mark.parametrize(("given", "attempt", "retry_after", "expected"), [
    # base x 1, 2, 4 ... after each failed attempt
    (STEADY, 1, None, 1.0),
    (STEADY, 2, None, 2.0),
    (STEADY, 4, None, 8.0),
    # the attempts are spent: give up (or fall back)
    (STEADY, 5, None, None),
    (STEADY, 9, None, None),
    (attempts(1), 1, None, None),
    # capped
    (attempts(20), 10, None, 60.0),
    # Retry-After lengthens a wait, never shortens it, and stays within the cap
    (STEADY, 1, 5.0, 5.0),
    (STEADY, 3, 0.5, 4.0),
    (STEADY, 1, 500.0, 60.0),
    (STEADY, 1, 0.0, 1.0),
])
def test_next_delay(given: RetryPolicy, attempt: int, retry_after: float | None,
                    expected: float | None) -> None:
    assert next_delay(given, attempt, retry_after) == expected


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 1.6), (0.5, 2.0), (1.0, 2.4)])
def test_next_delay_spreads_by_the_jitter(rand: float, expected: float) -> None:
    assert next_delay(replace(STEADY, jitter=0.2), 2, rand=lambda: rand) == pytest.approx(expected)


@pytest.mark.parametrize(("polls", "retry_after", "expected"), [
    (0, None, 1.0),
    (1, None, 1.5),
    (2, None, 2.25),
    (20, None, 15.0),
    # an upstream asking for more time on a poll gets it, past the poll cap too
    (0, 30.0, 30.0),
    (1, 0.5, 1.5),
])
def test_next_poll(polls: int, retry_after: float | None, expected: float) -> None:
    assert next_poll(STEADY, polls, retry_after) == expected


def test_the_policy_is_built_from_the_jobs_settings() -> None:
    jobs = JobSettings(max_attempts=4, retry_base_seconds=2.0, retry_cap_seconds=30.0,
                       poll_initial_seconds=0.5, poll_cap_seconds=10.0)
    assert RetryPolicy.from_settings(jobs) == RetryPolicy(
        max_attempts=4, base=2.0, cap=30.0, jitter=0.2, poll_initial=0.5, poll_cap=10.0)
