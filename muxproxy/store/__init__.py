"""Job stores, chosen by the database URL's scheme from a table of names.

Each backend lives in its own module, imported only when a URL names it, so one
with dependencies of its own (PostgreSQL's asyncpg) costs nothing unless configured.
"""

from __future__ import annotations

from typing import Protocol

from muxproxy.settings import DatabaseSettings
from muxproxy.settings_checks import choose
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

# scheme -> "module:class"
BACKENDS: dict[str, str] = {
    "sqlite": "muxproxy.store.sqlite:SqliteStore",
    "postgresql": "muxproxy.store.postgres:PostgresStore",
    "postgres": "muxproxy.store.postgres:PostgresStore",
}


class StoreBackend(Protocol):
    """What a backend class offers beside the :class:`Store` interface."""

    # Whether several processes may run on one database at once (serve --workers N,
    # replicas): a server database may, a SQLite file has one writer.
    shared: bool

    def check_url(self, url: str) -> None:
        """Refuse a URL this backend cannot use (a SettingsError naming database.url)."""

    def from_url(self, url: str, database: DatabaseSettings) -> Store:
        """A store for ``url``, checked but not yet opened, with the ``database``
        settings that apply to this backend."""


def store_backend(url: str) -> StoreBackend:
    backend: StoreBackend = choose(BACKENDS, url.partition(":")[0], "database.url", "scheme")
    return backend


def check_store_url(url: str) -> None:
    store_backend(url).check_url(url)


def open_store(url: str, database: DatabaseSettings | None = None) -> Store:
    """A store for ``url`` (``sqlite:///path`` or ``postgresql://...``), not yet opened."""
    return store_backend(url).from_url(url, database or DatabaseSettings(url=url))


__all__ = ["ApiKey", "Billing", "ConcurrencyLimitReached", "InsufficientBalance", "KeyExists",
           "KeyLimits", "KeyNotFound", "Recovery", "StaleJob", "Store", "StoreBackend",
           "check_store_url", "open_store", "store_backend"]
