"""Requests per minute per key: a token bucket.

Each key's bucket holds up to ``rpm`` tokens and refills at ``rpm / 60`` per second,
so a key may burst its whole minute and then runs at its steady rate. Taking a
token is the store's job (:meth:`~muxproxy.store.accounts.AccountStore.take_request`),
so the limit holds wherever the store is shared: a backend only one process uses
(SQLite) keeps the buckets in that process's memory with :class:`RateLimiter`; the
PostgreSQL backend keeps them in a table, one upsert per request, so every replica
counts against the same bucket (:mod:`muxproxy.store.postgres_accounts`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: int  # ms


class RateLimiter:
    """The buckets in memory, for a store one process uses."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key_id: str, rpm: int, now: int) -> float | None:
        """Take one token at ``now`` (ms); None when allowed, else seconds until one is
        available."""
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()  # bounded memory; a reset only ever forgives
            bucket = self._buckets[key_id] = _Bucket(tokens=float(rpm), updated=now)
        refill = max(now - bucket.updated, 0) * rpm / 60_000
        bucket.tokens = min(float(rpm), bucket.tokens + refill)
        bucket.updated = max(bucket.updated, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return retry_after(bucket.tokens, rpm)


def retry_after(tokens: float, rpm: int) -> float:
    """Seconds until a bucket holding ``tokens`` (< 1) has one."""
    return (1.0 - tokens) * 60.0 / rpm
