"""The store interface: every backend (SQLite now, PostgreSQL later) implements it
and passes ``tests/test_store_contract.py``.

Public methods enforce the job state machine; a transition that
:data:`muxproxy.jobs.TRANSITIONS` does not allow, or whose expected state no longer
holds, is refused here and by the database itself.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from muxproxy.jobs import IllegalTransition, Job, JobState, NewJob, can_transition
from muxproxy.store.accounts import AccountStore
from muxproxy.webhooks.outbox import Attempt, Backlog, Delivery, SigningSecret, Verdict

# Columns a transition may change besides the state. Anything else is refused, so
# callers cannot bypass the state machine by writing, say, ``state`` as a change.
MUTABLE_FIELDS = frozenset({
    "route_index", "provider", "upstream_model", "upstream_id", "upstream_state", "result",
    "fail_code", "fail_msg", "attempts", "recoveries", "polls", "started_at", "completed_at",
    "run_after",
})


class StaleJob(Exception):
    """A compare-and-swap lost: the job is not in the expected state or lease."""

    def __init__(self, job_id: str, expected: JobState, actual: JobState | None) -> None:
        super().__init__(f"job {job_id}: expected {expected}, found {actual}")
        self.job_id = job_id
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Store.recover` did with jobs a previous process left behind."""

    resumed: int = 0
    retried: int = 0
    failed: tuple[Job, ...] = ()


class Store(AccountStore):
    """Persistence for jobs, accounts and the webhook outbox. Times are integer
    milliseconds since the epoch.

    Whenever a job with a ``callback_url`` becomes terminal (:meth:`transition`,
    :meth:`expire_overdue`, :meth:`recover`), a backend inserts its pending
    :class:`Delivery`, due at once, in the same transaction.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and migrate the schema to the current version."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the database cannot be reached."""

    # -- jobs ---------------------------------------------------------------

    @abc.abstractmethod
    async def create_job(self, new: NewJob) -> Job:
        """Store a new pending job. When it is priced, hold its price from the key's
        balance in the same transaction (:class:`InsufficientBalance` if short, unless
        the key is unlimited); when ``new.max_concurrent`` is set, refuse with
        :class:`ConcurrencyLimitReached` if the key has that many unfinished jobs.
        With ``new.idempotency``, bind that reserved key to the job in the same
        transaction (:class:`IdempotencySuperseded` if a retry took it over)."""

    @abc.abstractmethod
    async def get_job(self, job_id: str, key_id: str | None = None) -> Job | None:
        """The job, or None; with ``key_id``, None also when another key owns it."""

    @abc.abstractmethod
    async def list_jobs(self, key_id: str, *, limit: int = 50,
                        before: int | None = None) -> list[Job]:
        """A key's jobs, newest first; ``before`` pages by ``created_at``."""

    @abc.abstractmethod
    async def claim_due(self, provider: str, now: int, limit: int, owner: str,
                        lease_until: int) -> list[Job]:
        """Atomically lease up to ``limit`` non-terminal jobs due by ``now``, earliest
        ``run_after`` first: unleased ones, and those whose lease lapsed by ``now``
        (a step whose lease could not be handed back is never stranded)."""

    async def claim_due_many(self, wanted: Mapping[str, tuple[int, int]], now: int,
                             owner: str) -> dict[str, list[Job]]:
        """:meth:`claim_due` for several providers at once: ``wanted`` maps a provider
        to ``(limit, lease_until)``; providers with nothing claimed may be left out.
        Backends override it to do it in one round trip."""
        claimed = {}
        for provider, (limit, lease_until) in wanted.items():
            claimed[provider] = await self.claim_due(provider, now, limit, owner, lease_until)
        return {name: jobs for name, jobs in claimed.items() if jobs}

    async def transition(self, job: Job | str, expected: JobState, target: JobState, *,
                         now: int, owner: str | None = None, release: bool = True,
                         **changes: Any) -> Job:
        """Move a job from ``expected`` to ``target``, applying ``changes``.

        With ``owner``, the job must still be leased by it. ``release`` drops the
        lease in the same write. Billing moves in the same transaction: a held job
        starting to process is charged; a failing job is refunded or released.
        Raises :class:`IllegalTransition` or :class:`StaleJob`.
        """
        job_id = job if isinstance(job, str) else job.id
        if not can_transition(expected, target):
            raise IllegalTransition(job_id, expected, target)
        unknown = set(changes) - MUTABLE_FIELDS
        if unknown:
            raise ValueError(f"not a mutable job field: {', '.join(sorted(unknown))}")
        return await self._transition(job_id, expected, target, now=now, owner=owner,
                                      release=release, changes=changes,
                                      known=None if isinstance(job, str) else job)

    @abc.abstractmethod
    async def _transition(self, job_id: str, expected: JobState, target: JobState, *,
                          now: int, owner: str | None, release: bool,
                          changes: Mapping[str, Any], known: Job | None) -> Job:
        """``known`` is the caller's copy of the job, if it gave one: a backend may
        build the job it returns from it instead of reading the row back."""

    @abc.abstractmethod
    async def release(self, job_id: str, owner: str, *, now: int) -> None:
        """Drop a lease without changing the job (a worker stopping mid-step)."""

    @abc.abstractmethod
    async def expire_overdue(self, now: int, limit: int = 100) -> list[Job]:
        """Fail unleased non-terminal jobs whose deadline has passed; return them."""

    @abc.abstractmethod
    async def next_due(self, providers: Sequence[str]) -> int | None:
        """When the next non-terminal job of those providers falls due: the earliest
        ``run_after`` of an unleased one, or ``lease_until`` of one whose lease will
        lapse (then :meth:`claim_due` takes it again)."""

    @abc.abstractmethod
    async def renew_leases(self, job_ids: Sequence[str], owner: str, until: int) -> None:
        """Extend ``owner``'s leases on those jobs to ``until`` (steps still running);
        a job no longer leased by ``owner`` is left alone."""

    @abc.abstractmethod
    async def recover(self, owner: str, now: int) -> Recovery:
        """Take back jobs a dead process held.

        A job with an upstream id resumes polling; one without is retried once,
        then failed, so nothing stays stuck.
        """

    # -- retention and health ------------------------------------------------------

    @abc.abstractmethod
    async def ended_unswept(self, limit: int) -> list[Job]:
        """Ended jobs whose blobs the retention sweep has not looked at yet, the
        longest ended first."""

    @abc.abstractmethod
    async def expired_unswept(self, ended_before: int, limit: int) -> list[Job]:
        """Jobs ended by ``ended_before`` whose results are not swept yet."""

    @abc.abstractmethod
    async def mark_swept(self, job_ids: Sequence[str], level: int) -> None:
        """Record what the sweep deleted: 1 the job's inputs, 2 its results too."""

    @abc.abstractmethod
    async def probe_write(self, now: int) -> None:
        """One small real write, committed: fails while the database cannot write."""

    @abc.abstractmethod
    async def count_jobs(self) -> Mapping[tuple[str, str, str], int]:
        """Jobs by (model, provider, state), for metrics."""

    # -- webhook outbox ----------------------------------------------------------

    @abc.abstractmethod
    async def get_delivery(self, job_id: str, key_id: str | None = None) -> Delivery | None:
        """A job's callback delivery; with ``key_id``, None when another key owns it."""

    @abc.abstractmethod
    async def list_attempts(self, delivery_id: str) -> list[Attempt]:
        """A delivery's attempts, oldest first."""

    @abc.abstractmethod
    async def claim_deliveries(self, now: int, limit: int, owner: str, lease_until: int,
                               skip_hosts: Sequence[str] = (),
                               skip_keys: Sequence[str] = ()) -> list[Delivery]:
        """Atomically lease up to ``limit`` pending deliveries due by ``now`` (unleased,
        or with a lapsed lease), earliest first, leaving out ``skip_hosts`` and the
        deliveries of ``skip_keys``."""

    @abc.abstractmethod
    async def record_attempt(self, delivery_id: str, owner: str, attempt: Attempt,
                             verdict: Verdict, *, now: int,
                             keep: int | None = None) -> Delivery | None:
        """Append ``attempt`` (numbered next) and apply ``verdict``, releasing the lease,
        in one transaction; None, and nothing written, if ``owner`` lost the lease.
        With ``keep``, only the newest ``keep`` attempts stay (older ones are pruned
        in the same transaction)."""

    @abc.abstractmethod
    async def release_delivery(self, delivery_id: str, owner: str) -> None:
        """Drop a lease without recording an attempt (stopping, or over a host limit)."""

    @abc.abstractmethod
    async def recover_deliveries(self, owner: str) -> int:
        """Drop the leases a dead process held; return how many."""

    @abc.abstractmethod
    async def redeliver(self, job: Job, *, now: int) -> Delivery:
        """Arm a terminal job's delivery again, due at ``now`` with a fresh retry window
        (created if the job has none), keeping its id and attempt history.
        :class:`DeliveryPending` while the delivery is still pending."""

    @abc.abstractmethod
    async def next_delivery_due(self, skip_hosts: Sequence[str] = (),
                                skip_keys: Sequence[str] = ()) -> int | None:
        """The earliest ``next_attempt_at`` among unleased pending deliveries."""

    @abc.abstractmethod
    async def delivery_backlog(self) -> Backlog:
        """Pending deliveries: how many, and when the oldest was created."""

    @abc.abstractmethod
    async def set_signing_secret(self, key_id: str, secret: str, *,
                                 now: int) -> SigningSecret:
        """Store (or replace) the key's webhook signing secret."""

    @abc.abstractmethod
    async def signing_secret(self, key_id: str) -> SigningSecret | None: ...

    @abc.abstractmethod
    async def delete_signing_secret(self, key_id: str) -> bool:
        """Stop signing the key's callbacks; False when it had no secret."""
