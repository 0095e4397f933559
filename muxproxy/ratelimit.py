"""Requests per minute per key, as a token bucket in memory.

Each key's bucket holds up to ``rpm`` tokens and refills at ``rpm / 60`` per second,
so a key may burst its whole minute and then runs at its steady rate. The buckets
are per process: replicas behind a balancer each grant the full rate (a shared
limiter belongs with the PostgreSQL backend).
"""

from __future__ import annotations

from dataclasses import dataclass

from muxproxy.clock import Clock


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, clock: Clock, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key_id: str, rpm: int) -> float | None:
        """Take one token; None when allowed, else seconds until one is available."""
        now = self.clock.now()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()  # bounded memory; a reset only ever forgives
            bucket = self._buckets[key_id] = _Bucket(tokens=float(rpm), updated=now)
        rate = rpm / 60.0
        bucket.tokens = min(float(rpm), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate
