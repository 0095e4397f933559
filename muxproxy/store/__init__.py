"""Job stores, chosen by the database URL's scheme."""

from __future__ import annotations

from muxproxy.settings import SettingsError, sqlite_path
from muxproxy.store.accounts import (
    ApiKey,
    Billing,
    ConcurrencyLimitReached,
    InsufficientBalance,
    KeyExists,
    KeyLimits,
    KeyNotFound,
)
from muxproxy.store.base import Recovery, StaleJob, Store
from muxproxy.store.sqlite import SqliteStore


def open_store(url: str, *, busy_timeout_seconds: float = 5.0) -> Store:
    """A store for ``url``, not yet opened. ``sqlite:///path`` today; ``postgresql://`` later."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        return SqliteStore(sqlite_path(url), busy_timeout_ms=int(busy_timeout_seconds * 1000))
    raise SettingsError(f"database.url: unsupported scheme {scheme!r}")


__all__ = ["ApiKey", "Billing", "ConcurrencyLimitReached", "InsufficientBalance", "KeyExists",
           "KeyLimits", "KeyNotFound", "Recovery", "StaleJob", "Store", "open_store"]
