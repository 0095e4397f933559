"""The one primitive every backend's rules run on: a transaction.

The store's rules (billing, the concurrency limit, callbacks on a job's end, the
recovery policy, idempotency binding) live in the backend-neutral classes
(:mod:`muxproxy.store.jobs` and its siblings). Each runs as one call of
:meth:`Transactional._transaction` with a :class:`Tx`: the few row operations the
rules need, all inside one transaction, so a rule's writes land together or not
at all. A backend implements :class:`Tx` and ``_transaction``; the rules stay here.
A rule that makes a single statement may run as :meth:`Transactional._statement`
instead, which PostgreSQL sends without ``BEGIN`` and ``COMMIT``.

Values in a row or in a change are the records' own: JSON columns as mappings, which
a backend encodes its way (text for SQLite, ``jsonb`` for PostgreSQL).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from muxproxy.pipeline.jobs import IdempotencyClaim, Job, JobState

if TYPE_CHECKING:
    from muxproxy.store.accounts import ApiKey, KeyLimits, LedgerKind

T = TypeVar("T")


@dataclass(frozen=True)
class IdempotencyRow:
    """An Idempotency-Key's stored record, as the binding rules read it."""

    request_hash: str
    job_id: str | None
    owner: str
    created_at: int
    job_exists: bool


class Tx(abc.ABC):
    """Row operations inside one transaction."""

    # -- jobs ---------------------------------------------------------------

    @abc.abstractmethod
    async def insert_job(self, row: Mapping[str, Any]) -> Job:
        """Insert a job row (every column but those left to their defaults, see
        :data:`~muxproxy.store.rows.NEW_JOB_DEFAULTS`); return the job as stored."""

    @abc.abstractmethod
    async def update_job(self, job_id: str, expected: JobState | None, owner: str | None,
                         values: Mapping[str, Any], *, after: Job | None = None) -> Job | None:
        """Apply ``values`` to the job if it is in state ``expected`` (any state when
        None) and, with ``owner``, still leased by it; None when it is not. ``after``
        is the job as the update leaves it, handed back instead of reading the row.
        A state change the schema refuses raises :class:`IllegalTransition`."""

    @abc.abstractmethod
    async def active_jobs(self, key_id: str) -> int:
        """How many of the key's jobs are pending or processing."""

    @abc.abstractmethod
    async def fail_overdue(self, now: int, limit: int, values: Mapping[str, Any]) -> list[Job]:
        """Apply ``values`` (a move to failed) to up to ``limit`` non-terminal jobs past
        their deadline and not leased (or with a lease lapsed before ``now``), in one
        statement; return them as they are now."""

    @abc.abstractmethod
    async def orphaned(self, owner: str, now: int) -> list[Job]:
        """Non-terminal jobs whose lease, held by another owner than ``owner``, lapsed
        by ``now`` (its process is gone, or stopped renewing it), locked for the
        transaction; never a live lease another process still renews."""

    @abc.abstractmethod
    async def set_billing(self, job_id: str, expected: str, target: str) -> bool:
        """Move a job's billing state from ``expected`` to ``target``; False if it was
        not ``expected`` (the move happened already)."""

    # -- accounts -----------------------------------------------------------

    @abc.abstractmethod
    async def funds(self, key_id: str) -> tuple[int, bool] | None:
        """The key's balance and whether it is unlimited; None when there is no such key."""

    @abc.abstractmethod
    async def key(self, key_id: str) -> ApiKey | None:
        """The key with that id (never one that merely has it as its name)."""

    @abc.abstractmethod
    async def key_named(self, name: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def insert_key(self, key_id: str, name: str, key_hash: str, now: int,
                         limits: KeyLimits) -> None:
        """:class:`KeyExists` if the name is taken."""

    @abc.abstractmethod
    async def set_key(self, key_id: str, limits: KeyLimits,
                      key_hash: str | None = None) -> ApiKey | None:
        """Replace the limits (and the hash, if given) of the key with that id; None
        when there is none."""

    @abc.abstractmethod
    async def add_ledger(self, key_id: str, kind: LedgerKind, amount: int, now: int, *,
                         job_id: str | None = None, model: str | None = None,
                         note: str | None = None) -> None:
        """Append a ledger row and move the key's balance by the same amount. A second
        row of one kind for one job is refused (an integrity error)."""

    # -- idempotency ----------------------------------------------------------

    @abc.abstractmethod
    async def purge_idempotency(self, key_id: str, idem_key: str, now: int) -> None:
        """Delete this key's record if expired by ``now``, and a bounded batch of others."""

    @abc.abstractmethod
    async def idempotency(self, key_id: str, idem_key: str) -> IdempotencyRow | None: ...

    @abc.abstractmethod
    async def put_idempotency(self, claim: IdempotencyClaim, request_hash: str, owner: str,
                              now: int, expires_at: int) -> None:
        """Write a reservation (no job yet) under ``claim``, replacing any record."""

    @abc.abstractmethod
    async def bind_idempotency(self, claim: IdempotencyClaim, job_id: str) -> bool:
        """Bind the reservation to the job; False if ``claim`` no longer holds it."""

    @abc.abstractmethod
    async def drop_idempotency(self, claim: IdempotencyClaim) -> None:
        """Delete the reservation if ``claim`` still holds it and no job is bound."""

    # -- webhook outbox ----------------------------------------------------------

    @abc.abstractmethod
    async def insert_deliveries(self, jobs: Sequence[Job], now: int) -> None:
        """A pending delivery, due at ``now``, for each job that has none yet."""


class Transactional(abc.ABC):
    @abc.abstractmethod
    async def _transaction(self, rule: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        """Run ``rule`` in one transaction: all its writes, or (it raised) none."""

    async def _statement(self, rule: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        """Run ``rule``, which makes exactly one statement, atomic by itself: a backend
        may spare it a transaction's own round trips (``BEGIN`` and ``COMMIT``)."""
        return await self._transaction(rule)


def run_inline(step: Coroutine[Any, Any, T]) -> T:
    """Run a rule to its end at once, for a backend whose :class:`Tx` never suspends
    (SQLite's, inside its group commit, which runs on the loop's thread)."""
    try:
        step.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    step.close()
    raise RuntimeError("a store rule waited on something other than its transaction")
