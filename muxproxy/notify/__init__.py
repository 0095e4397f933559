"""Cross-process signals (a job ended, a job was queued, a key changed), chosen by the
database URL's scheme from a table of names, like the store itself."""

from __future__ import annotations

from typing import Protocol

from muxproxy.clock import Clock
from muxproxy.notify.base import EVERY, Handler, Notifier, Signal
from muxproxy.settings import DatabaseSettings
from muxproxy.settings_checks import choose

# scheme -> "module:class"; the same schemes as muxproxy.store.BACKENDS.
NOTIFIERS: dict[str, str] = {
    "sqlite": "muxproxy.notify.sqlite:SqliteNotifier",
    "postgresql": "muxproxy.notify.postgres:PostgresNotifier",
    "postgres": "muxproxy.notify.postgres:PostgresNotifier",
}


class NotifierBackend(Protocol):
    def from_settings(self, database: DatabaseSettings, clock: Clock,
                      shared: bool) -> Notifier:
        """A notifier for the database ``database.url`` names, not yet started;
        ``clock`` times its reconnections; ``shared``: other processes of this host
        serve on the database too (``serve --workers N``)."""


def open_notifier(database: DatabaseSettings, clock: Clock, *, shared: bool = False
                  ) -> Notifier:
    scheme = database.url.partition(":")[0]
    backend: NotifierBackend = choose(NOTIFIERS, scheme, "database.url", "scheme")
    return backend.from_settings(database, clock, shared)


__all__ = ["EVERY", "NOTIFIERS", "Handler", "Notifier", "Signal", "open_notifier"]
