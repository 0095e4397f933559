"""The notifier of a database only one process uses (SQLite): that process hears
its changes in-process already (see :mod:`muxproxy.notify.base`), and no other
process serves requests on the same database, so nothing needs to travel."""

from __future__ import annotations

from muxproxy.clock import Clock
from muxproxy.notify.base import Notifier
from muxproxy.settings import DatabaseSettings


class LocalNotifier(Notifier):
    @classmethod
    def from_settings(cls, database: DatabaseSettings, clock: Clock) -> LocalNotifier:
        return cls()

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
