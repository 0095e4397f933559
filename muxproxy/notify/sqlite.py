"""The notifier of a SQLite file several processes of one host use (``serve
--workers N``).

The file carries the signals itself, as PostgreSQL's ``pg_notify`` does: triggers
(``schema.py``, migration 8) write a row to ``signals`` inside the transaction that
makes the change, so only a committed change is heard, whoever made it (a worker,
``muxproxy keys`` from a shell). They write only while some process listens: each
listener keeps a row in ``signal_listeners``, so a gateway alone on its file pays
nothing for signals.

Each listener reads the rows past the last one it read every ``poll_seconds``, a
lookup on the primary key that finds nothing most of the time, on the loop's
thread. Every ``keep_alive_seconds`` it renews its row and deletes signals older
than ``KEEP_MS``, which every listener has read by then. A wait also reads its job
every :attr:`recheck_seconds`, so a signal missed while the loop was stalled that
long delays an answer, never hangs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time

from muxproxy.clock import Clock
from muxproxy.logs import get_logger
from muxproxy.notify.base import Notifier, Signal
from muxproxy.notify.local import LocalNotifier
from muxproxy.settings import DatabaseSettings, sqlite_path
from muxproxy.store.sqlite import LISTENER_GONE_MS

log = get_logger("muxproxy.notify")

POLL_SECONDS = 0.02
KEEP_ALIVE_SECONDS = 5.0
# Signals are deleted this long after they were written: read by every listener by
# then, unless its loop stalled longer (then its waits find their jobs by rereading).
KEEP_MS = 30_000


class SqliteNotifier(Notifier):
    recheck_seconds = 2.0

    @classmethod
    def from_settings(cls, database: DatabaseSettings, clock: Clock,
                      shared: bool) -> Notifier:
        if not shared:
            return LocalNotifier()
        return cls(str(sqlite_path(database.url)))

    def __init__(self, path: str, *, poll_seconds: float = POLL_SECONDS,
                 keep_alive_seconds: float = KEEP_ALIVE_SECONDS) -> None:
        super().__init__()
        self.path = path
        self.poll_seconds = poll_seconds
        self.keep_alive_seconds = keep_alive_seconds
        self.owner = secrets.token_hex(8)
        self._conn: sqlite3.Connection | None = None
        self._last = 0
        self._reading = False

    async def start(self) -> None:
        """Listen from now on: signals written before this are not heard."""
        self._conn = sqlite3.connect(self.path, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 5000")  # the first write waits its turn
        self._keep_alive()
        row = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM signals").fetchone()
        self._last = int(row[0])
        self._conn.execute("PRAGMA busy_timeout = 0")  # later ones never block the loop
        self._reading = True
        self._listen_in_background(self._listen())

    @property
    def listening(self) -> bool:
        return self._conn is not None and self._reading

    async def aclose(self) -> None:
        await self._stop_listening()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("DELETE FROM signal_listeners WHERE owner = ?",
                                   (self.owner,))
            self._conn.close()
            self._conn = None

    async def _listen(self) -> None:
        # Real time, not the gateway's clock: the rows are stamped by SQLite's.
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                self.read()
                self._reading = True
                if loop.time() - renewed >= self.keep_alive_seconds:
                    renewed = loop.time()
                    self._keep_alive()
            except sqlite3.Error as exc:
                self._reading = False
                log.warning("reading signals failed; retrying", error=str(exc))

    def read(self) -> int:
        """Deliver the signals written since the last read; how many there were."""
        assert self._conn is not None
        rows = self._conn.execute("SELECT seq, channel, subject FROM signals WHERE seq > ? "
                                  "ORDER BY seq", (self._last,)).fetchall()
        for seq, channel, subject in rows:
            self._last = seq
            self.deliver(Signal(channel), subject)
        return len(rows)

    def _keep_alive(self) -> None:
        """Renew this listener's row; delete old signals and listeners long gone. The
        write lock is not waited for (but at start): busy now, done next time."""
        assert self._conn is not None
        now = int(time.time() * 1000)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                return
            raise
        try:
            self._conn.execute("INSERT INTO signal_listeners (owner, alive_at) VALUES (?, ?) "
                               "ON CONFLICT (owner) DO UPDATE SET alive_at = excluded.alive_at",
                               (self.owner, now))
            self._conn.execute("DELETE FROM signal_listeners WHERE alive_at < ?",
                               (now - LISTENER_GONE_MS,))
            self._conn.execute("DELETE FROM signals WHERE at < ?", (now - KEEP_MS,))
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
