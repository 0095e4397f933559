"""The notification interface: signals about changes in the database, heard by
every gateway process that uses it.

A process hears its own changes directly from the code that made them (the runner
publishes a job's end to :class:`~muxproxy.pipeline.events.JobEvents`, the gateway
wakes its scheduler, the admin API clears its key cache). A :class:`Notifier`
carries the same news to the other processes on the database: nothing for a lone
process on SQLite, rows in a table for the workers sharing a SQLite file,
``LISTEN/NOTIFY`` for PostgreSQL. Handlers must be idempotent and
cheap: a process may hear its own change again, and after a lost connection it
hears :data:`EVERY`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any

from muxproxy.logs import get_logger

log = get_logger("muxproxy.notify")

#: The subject of a signal delivered when signals may have been missed (the
#: listener reconnected): anything of that kind may have changed.
EVERY = "*"


class Signal(StrEnum):
    """What changed. The value is the PostgreSQL channel (see ``pg_schema.py``'s
    triggers); the subject travels as the payload."""

    JOB_ENDED = "muxproxy_job_ended"      # a job became terminal; subject: its id
    JOB_QUEUED = "muxproxy_job_queued"    # a job was created unleased; subject: its provider
    KEY_CHANGED = "muxproxy_key_changed"  # revoked, limits or credits; subject: the key's id


Handler = Callable[[str], None]


class Notifier(abc.ABC):
    #: How often a wait for a job's end reads the job again, in case its signal was
    #: lost (a listener reconnecting); None where a signal cannot be lost.
    recheck_seconds: float | None = None

    def __init__(self) -> None:
        self._handlers: dict[Signal, list[Handler]] = {signal: [] for signal in Signal}
        self._listening: asyncio.Task[None] | None = None

    def subscribe(self, signal: Signal, handler: Handler) -> None:
        """Call ``handler`` with the subject of every ``signal`` (or :data:`EVERY`). It
        runs on the event loop: quick, never blocking."""
        self._handlers[signal].append(handler)

    def deliver(self, signal: Signal, subject: str) -> None:
        for handler in self._handlers[signal]:
            try:
                handler(subject)
            except Exception:
                log.exception("signal handler failed", signal=signal.name)

    def deliver_every(self) -> None:
        """Signals may have been missed: every handler hears :data:`EVERY`."""
        for signal in Signal:
            self.deliver(signal, EVERY)

    def _listen_in_background(self, loop: Coroutine[Any, Any, None]) -> None:
        self._listening = asyncio.create_task(loop, name="muxproxy-notify")

    async def _stop_listening(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None

    @property
    def listening(self) -> bool | None:
        """Whether the other processes' signals are heard now; None where none
        travel (a lone process). Shown by ``/readyz``: while False, waits for jobs
        that end elsewhere answer by their ``recheck_seconds`` reads."""
        return None

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin hearing other processes' signals (raise if that cannot begin)."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...
