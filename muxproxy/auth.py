"""API keys: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``.

Keys are stored as SHA-256 digests and looked up by digest, so the secret itself
is never compared, stored or logged.

A looked-up key is kept in memory for ``CACHE_SECONDS`` (one second), sparing a
store read on every request. The admin API clears the cache whenever it changes a
key, so a key revoked there gets 401 on its very next request. A change made by
another process (another replica's admin API, ``muxproxy keys``) is dropped from
the cache when its signal arrives (:mod:`muxproxy.notify`: at once on PostgreSQL),
and in any case within ``CACHE_SECONDS``. Keys that are not found are not cached.
"""

from __future__ import annotations

import hashlib
import time

from starlette.requests import Request

from muxproxy.errors import Unauthorized
from muxproxy.notify import EVERY
from muxproxy.store import ApiKey, Store


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


CACHE_SECONDS = 1.0
CACHE_SIZE = 10_000


class Authenticator:
    def __init__(self, store: Store, cache_seconds: float = CACHE_SECONDS) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        # presented key -> (key, monotonic expiry). Keyed by the secret itself so a
        # hit skips the digest too; it lives in this process's memory only.
        self._cache: dict[str, tuple[ApiKey, float]] = {}

    async def lookup(self, presented: str) -> ApiKey | None:
        """The key for a presented secret (revoked ones included), or None."""
        now = time.monotonic()
        hit = self._cache.get(presented)
        if hit is not None and hit[1] > now:
            return hit[0]
        found = await self.store.key_by_hash(hash_key(presented))
        if found is not None and self.cache_seconds > 0:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[presented] = (found, now + self.cache_seconds)
        return found

    def forget(self) -> None:
        """Drop every cached key (after a key changed: revoked, limits, credits)."""
        self._cache.clear()

    def forget_key(self, key_id: str) -> None:
        """Drop the cached copies of one key (:data:`~muxproxy.notify.EVERY`: of all),
        changed by another process: a :class:`~muxproxy.notify.Notifier` handler."""
        if key_id == EVERY:
            self._cache.clear()
            return
        for presented in [p for p, (key, _) in self._cache.items() if key.id == key_id]:
            del self._cache[presented]

    async def authenticate(self, request: Request) -> ApiKey:
        key = presented_key(request)
        if key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer KEY' or "
                               "'x-api-key: KEY'")
        found = await self.lookup(key)
        if found is None or found.revoked_at is not None:
            raise Unauthorized("invalid API key")
        return found
