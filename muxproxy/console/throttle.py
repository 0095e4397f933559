"""Failed console sign-ins, counted per client address.

Each address has a bucket of ``PER_MINUTE`` tries that refills at that pace; a
failed sign-in takes one. While the bucket is empty, the address's next try is
not even checked: the form answers 429 with ``Retry-After``. Guessing the admin
token or a key through the form is held to that pace, while someone who mistyped
waits seconds at most. The buckets live in this process's memory, so each replica
keeps its own; behind a proxy, every client shares the proxy's address (the
gateway does not trust forwarded headers).
"""

from __future__ import annotations

import math

from muxproxy.ratelimit import retry_after

PER_MINUTE = 10
_ADDRESSES = 10_000  # remembered at most; past that the buckets start over


class FailedSignIns:
    def __init__(self, per_minute: int = PER_MINUTE) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, int]] = {}  # address -> (tries left, at ms)

    def wait(self, address: str, now: int) -> int | None:
        """Whole seconds before ``address`` may try again; None: it may now."""
        left = self._left(address, now)
        # Rounded to the millisecond first: a float a hair over 10 s is 10 s.
        return None if left >= 1 else math.ceil(round(retry_after(left, self.per_minute), 3))

    def failed(self, address: str, now: int) -> None:
        """A failed try of ``address`` at ``now`` (ms) takes one from its bucket."""
        if address not in self._buckets and len(self._buckets) >= _ADDRESSES:
            self._buckets.clear()  # bounded memory; a reset only ever forgives
        self._buckets[address] = (max(self._left(address, now) - 1, 0.0), now)

    def _left(self, address: str, now: int) -> float:
        found = self._buckets.get(address)
        if found is None:
            return float(self.per_minute)
        left, at = found
        return min(float(self.per_minute), left + max(now - at, 0) * self.per_minute / 60_000)
