"""The store interface: every backend (SQLite and memory now, PostgreSQL later)
implements it and passes the contract suites (``tests/contract/test_store_*contract.py``).

:class:`Store` composes one class per concern. The rules (the job state machine,
billing, the concurrency limit, callbacks on a job's end, the recovery policy and
idempotency binding) are written once in those classes, over the primitives a
backend provides: one transaction runner with a :class:`~muxproxy.store.tx.Tx`,
and the plain reads and single-statement writes declared abstract here.
"""

from __future__ import annotations

import abc

from muxproxy.store.accounts import AccountStore
from muxproxy.store.idempotency import IdempotencyStore
from muxproxy.store.jobs import JobStore, Recovery, StaleJob
from muxproxy.store.outbox import OutboxStore

__all__ = ["Recovery", "StaleJob", "Store"]


class Store(JobStore, AccountStore, IdempotencyStore, OutboxStore):
    """Persistence for jobs, accounts, idempotency keys and the webhook outbox."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and migrate the schema to the current version."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the database cannot be reached."""

    def expect_other_processes(self) -> None:
        """Other processes serve on this database too (``serve --workers N``): what a
        backend keeps in one process's memory, it keeps in the database instead.
        Called before :meth:`open`; PostgreSQL keeps everything there already."""

    @abc.abstractmethod
    async def probe_write(self, now: int) -> None:
        """One small real write, committed: fails while the database cannot write."""
