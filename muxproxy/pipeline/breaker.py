"""A circuit breaker per provider.

After ``threshold`` transient failures in a row the circuit opens: jobs stop going
to that provider for ``cooldown`` seconds (they fall back to their next route, or
wait). Then one trial call is let through (half-open); its outcome closes or
reopens the circuit.

Only faults of the provider count (:func:`provider_fault`). What the request or
the gateway brought on itself (a bad reference, a 4xx, a moderation block, a
failed write to our own disk) neither counts nor resets the count: a tenant must
not be able to open a provider's circuit for everyone, nor keep a failing one
closed, by what it sends.
"""

from __future__ import annotations

from enum import StrEnum

from muxproxy.clock import Clock
from muxproxy.providers.base import UpstreamError


def provider_fault(exc: UpstreamError) -> bool:
    """Does this failure speak of the provider's health? A 5xx, a timeout, a broken
    connection or a garbled answer does. No 4xx does, 429 included: a 429 says the
    provider is up and throttling our account; the job waits out its Retry-After
    and may take its next route, and opening the circuit would turn one tenant's
    burst into a 30 s outage for every tenant.
    """
    if not exc.transient:
        return False
    return exc.status is None or not 400 <= exc.status < 500


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown: float, clock: Clock) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> Circuit:
        if self.opened_at is None:
            return Circuit.CLOSED
        if self.clock.now() - self.opened_at < self.cooldown:
            return Circuit.OPEN
        return Circuit.HALF_OPEN

    @property
    def retry_at(self) -> float:
        """When an open circuit lets a trial through (now, if it is not open)."""
        if self.opened_at is None:
            return self.clock.now()
        return self.opened_at + self.cooldown

    def allow(self) -> bool:
        """May a new submit go to this provider now? Half-open admits one trial."""
        state = self.state
        if state is Circuit.CLOSED:
            return True
        if state is Circuit.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial_in_flight = False

    def release(self) -> None:
        """A call let through told nothing of the provider's health (the request
        failed on its own, or no upstream call was made): hand back the trial."""
        self._trial_in_flight = False

    def failure(self) -> None:
        self.failures += 1
        if self._trial_in_flight or self.failures >= self.threshold:
            self.opened_at = self.clock.now()
        self._trial_in_flight = False
