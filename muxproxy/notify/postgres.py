"""PostgreSQL's notifier: ``LISTEN`` on a connection of its own, beside the pool.

The database sends the signals itself: triggers (``pg_schema.py``, migration 2)
call ``pg_notify`` inside the transaction that makes the change, so a signal is
delivered only once that transaction commits, whoever made the change (a replica,
``muxproxy keys`` from a shell). asyncpg calls :meth:`PostgresNotifier._heard`
for each, on the event loop.

A listener that loses its connection hears nothing until it is back: it is
watched (a lost socket at once, a silent one by a ``SELECT 1`` every
``KEEPALIVE_SECONDS``), connected again with backoff, and then every handler hears
:data:`~muxproxy.notify.base.EVERY`, since anything may have changed meanwhile.
Waits also read their job every :attr:`recheck_seconds`, so a signal lost in
between can delay a wait's answer by that much, never hang it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from muxproxy.clock import Clock
from muxproxy.logs import get_logger
from muxproxy.notify.base import Notifier, Signal
from muxproxy.settings import DatabaseSettings

log = get_logger("muxproxy.notify")

KEEPALIVE_SECONDS = 10.0
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0
# The connection's name in pg_stat_activity.
APPLICATION_NAME = "muxproxy-listener"
_FAULTS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresNotifier(Notifier):
    recheck_seconds = 2.0

    @classmethod
    def from_settings(cls, database: DatabaseSettings, clock: Clock,
                      shared: bool = True) -> PostgresNotifier:
        return cls(database.url, clock, connect_timeout_seconds=database.connect_timeout_seconds)

    def __init__(self, url: str, clock: Clock, *, connect_timeout_seconds: float = 5.0,
                 keepalive_seconds: float = KEEPALIVE_SECONDS) -> None:
        super().__init__()
        self.url = url
        self.clock = clock
        self.connect_timeout_seconds = connect_timeout_seconds
        self.keepalive_seconds = keepalive_seconds
        self._conn: asyncpg.Connection | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None

    async def start(self) -> None:
        """Listen now (a database that cannot be reached raises, as the store's open
        does), then keep listening in the background."""
        self._conn = await self._connect()
        self._listen_in_background(self._keep_listening())

    async def aclose(self) -> None:
        await self._stop_listening()
        if self._conn is not None:
            self._conn.terminate()  # never wait on a server that may be gone
            self._conn = None

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.url, timeout=self.connect_timeout_seconds,
                                     server_settings={"application_name": APPLICATION_NAME})
        try:
            for signal in Signal:
                await conn.add_listener(signal.value, self._heard)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _heard(self, conn: asyncpg.Connection | PoolConnectionProxy[Any], pid: int,
               channel: str, payload: object) -> None:
        self.deliver(Signal(channel), str(payload))

    async def _keep_listening(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            if self._conn is not None:
                await self._until_lost(self._conn)
                self._conn.terminate()
                self._conn = None
                log.warning("the notification listener lost its connection; reconnecting")
            try:
                self._conn = await self._connect()
            except _FAULTS as exc:
                log.warning("the notification listener could not connect", retry_seconds=delay,
                            error=str(exc) or type(exc).__name__)
                await self.clock.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            delay = RETRY_FIRST_SECONDS
            log.info("the notification listener is back; every wait reads its job again")
            self.deliver_every()

    async def _until_lost(self, conn: asyncpg.Connection) -> None:
        """Return once ``conn`` is closed, or a keepalive query fails or hangs."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.keepalive_seconds):
                    await lost.wait()
                return
            try:
                async with asyncio.timeout(self.connect_timeout_seconds):
                    await conn.execute("SELECT 1")
            except _FAULTS:
                return
