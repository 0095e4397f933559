"""The notifier of a database only one process uses (SQLite, one ``serve``): that
process hears its changes in-process already (see :mod:`muxproxy.notify.base`), and
no other process serves requests on the same database, so nothing needs to travel."""

from __future__ import annotations

from muxproxy.notify.base import Notifier


class LocalNotifier(Notifier):
    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
