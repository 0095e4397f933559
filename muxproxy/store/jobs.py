"""The jobs half of the store: the state machine and the rules that ride along
with it, over a backend's primitives.

Public methods enforce the job state machine; a transition that
:data:`muxproxy.pipeline.jobs.TRANSITIONS` does not allow, or whose expected state no longer
holds, is refused here (and, where the database can, by the database too).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from muxproxy.pipeline.jobs import IllegalTransition, Job, JobState, NewJob, can_transition
from muxproxy.store.accounts import Billing, IdempotencySuperseded
from muxproxy.store.billing import SETTLES, check_concurrency, hold, moved
from muxproxy.store.tx import Transactional, Tx

# Columns a transition may change besides the state. Anything else is refused, so
# callers cannot bypass the state machine by writing, say, ``state`` as a change.
MUTABLE_FIELDS = frozenset({
    "route_index", "provider", "upstream_model", "upstream_id", "upstream_state", "result",
    "fail_code", "fail_msg", "attempts", "recoveries", "polls", "started_at", "completed_at",
    "run_after",
})
_UNLEASED: Mapping[str, Any] = {"lease_owner": None, "lease_until": None}


class StaleJob(Exception):
    """A compare-and-swap lost: the job is not in the expected state or lease."""

    def __init__(self, job_id: str, expected: JobState, actual: JobState | None) -> None:
        super().__init__(f"job {job_id}: expected {expected}, found {actual}")
        self.job_id = job_id
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class Recovery:
    """What :meth:`JobStore.recover` did with jobs a previous process left behind."""

    resumed: int = 0
    retried: int = 0
    failed: tuple[Job, ...] = ()


def new_row(new: NewJob) -> dict[str, Any]:
    """A new job's row, JSON columns as mappings."""
    return {
        "id": new.id, "key_id": new.key_id, "surface": new.surface, "model": new.model,
        "state": JobState.PENDING.value, "params": new.request.to_json(),
        "client_params": new.client_params, "route_index": new.route_index,
        "provider": new.provider, "upstream_model": new.upstream_model,
        "callback_url": new.callback_url, "credits": new.credits,
        "billing": (Billing.HELD if new.credits > 0 else Billing.NONE).value,
        "created_at": new.created_at, "updated_at": new.created_at,
        "run_after": new.created_at, "deadline_at": new.deadline_at,
        "lease_owner": new.lease.owner if new.lease else None,
        "lease_until": new.lease.until if new.lease else None,
    }


@dataclass(frozen=True)
class JobQuery:
    """Which jobs :meth:`JobStore.find_jobs` returns: each field set narrows it (the
    key, state, model and provider equal; ``since`` <= created_at < ``before``, or
    with ``before_id`` too, the jobs after that one in the order, same millisecond
    included)."""

    key_id: str | None = None
    state: JobState | None = None
    model: str | None = None
    provider: str | None = None
    since: int | None = None
    before: int | None = None
    before_id: str | None = None
    limit: int = 50


class JobStore(Transactional):
    """Jobs. Times are integer milliseconds since the epoch.

    Whenever a job with a ``callback_url`` becomes terminal (:meth:`transition`,
    :meth:`expire_overdue`, :meth:`recover`), its pending delivery is inserted, due
    at once, in the same transaction."""

    async def create_job(self, new: NewJob) -> Job:
        """Store a new pending job. When it is priced, hold its price from the key's
        balance in the same transaction (:class:`InsufficientBalance` if short, unless
        the key is unlimited); when ``new.max_concurrent`` is set, refuse with
        :class:`ConcurrencyLimitReached` if the key has that many unfinished jobs.
        With ``new.idempotency``, bind that reserved key to the job in the same
        transaction (:class:`IdempotencySuperseded` if a retry took it over)."""
        row = new_row(new)
        if new.max_concurrent is None and new.credits == 0 and new.idempotency is None:
            return await self._statement(lambda tx: tx.insert_job(row))

        async def insert(tx: Tx) -> Job:
            if new.max_concurrent is not None:
                await check_concurrency(tx, new.key_id, new.max_concurrent)
            job = await tx.insert_job(row)
            if new.credits > 0:
                await hold(tx, new.key_id, new.id, new.model, new.credits, new.created_at)
            if new.idempotency is not None \
                    and not await tx.bind_idempotency(new.idempotency, new.id):
                raise IdempotencySuperseded(new.idempotency.idem_key)
            return job

        return await self._transaction(insert)

    @abc.abstractmethod
    async def get_job(self, job_id: str, key_id: str | None = None) -> Job | None:
        """The job, or None; with ``key_id``, None also when another key owns it."""

    @abc.abstractmethod
    async def list_jobs(self, key_id: str, *, limit: int = 50, before: int | None = None,
                        before_id: str | None = None) -> list[Job]:
        """A key's jobs, newest first (``created_at``, then ``id``, descending);
        ``before`` pages by ``created_at``: the jobs created earlier, and with
        ``before_id`` also those created in that same millisecond with a smaller id,
        so a page boundary between two jobs of one millisecond loses neither."""

    @abc.abstractmethod
    async def find_jobs(self, query: JobQuery) -> list[Job]:
        """Jobs matching ``query``, of every key unless it names one, newest first
        (``created_at``, then id); ``before`` pages."""

    @abc.abstractmethod
    async def scan_jobs(self, *, after: str | None = None, limit: int = 500) -> list[Job]:
        """Every job, by id, a page at a time (``after`` the last id seen): for audits."""

    async def claim_due(self, provider: str, now: int, limit: int, owner: str,
                        lease_until: int) -> list[Job]:
        """Atomically lease up to ``limit`` non-terminal jobs due by ``now``, earliest
        ``run_after`` first: unleased ones, and those whose lease lapsed by ``now``
        (a step whose lease could not be handed back is never stranded; a replica
        that died has its jobs taken over by any other).

        One kind of lapsed lease is left to :meth:`recover` (every sweep): another
        owner's job in processing without an upstream id, whose submit its owner may
        have cut off; recovery counts that interruption (``recoveries``) first."""
        claimed = await self.claim_due_many({provider: (limit, lease_until)}, now, owner)
        return claimed.get(provider, [])

    @abc.abstractmethod
    async def claim_due_many(self, wanted: Mapping[str, tuple[int, int]], now: int,
                             owner: str) -> dict[str, list[Job]]:
        """:meth:`claim_due` for several providers at once: ``wanted`` maps a provider
        to ``(limit, lease_until)``; providers with nothing claimed are left out. Each
        provider's claim is one atomic statement."""

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
        known = None if isinstance(job, str) else job
        if not can_transition(expected, target):
            raise IllegalTransition(job_id, expected, target)
        unknown = set(changes) - MUTABLE_FIELDS
        if unknown:
            raise ValueError(f"not a mutable job field: {', '.join(sorted(unknown))}")
        values = dict(changes, state=target.value, updated_at=now)
        if release:
            values.update(_UNLEASED)
        # The job as it will be, when the caller's copy says it all: the compare-and-
        # swap on state and on the caller's lease means no one else changed the row
        # since, and only a held or charged job's billing moves with it (that row is
        # read back, like any move made without a lease).
        after = None
        if (known is not None and owner is not None and known.lease_owner == owner
                and known.state is expected and known.billing not in SETTLES):
            after = known.moved(target, now=now, release=release, changes=changes)

        async def move(tx: Tx) -> Job | None:
            found = await tx.update_job(job_id, expected, owner, values, after=after)
            return None if found is None else (await moved(tx, [found], now))[0]

        # With no billing to move and no delivery to insert, the update is all.
        alone = after is not None and (after.callback_url is None or not after.is_terminal)
        result = await (self._statement if alone else self._transaction)(move)
        if result is None:
            current = await self.get_job(job_id)
            raise StaleJob(job_id, expected, current.state if current else None)
        return result

    async def release(self, job_id: str, owner: str, *, now: int) -> None:
        """Drop a lease without changing the job (a worker stopping mid-step)."""
        await self._statement(lambda tx: tx.update_job(job_id, None, owner, _UNLEASED))

    async def expire_overdue(self, now: int, limit: int = 100) -> list[Job]:
        """Fail unleased non-terminal jobs whose deadline has passed; return them."""
        values = {"state": JobState.FAILED.value, "fail_code": "deadline_exceeded",
                  "fail_msg": "job deadline exceeded before the upstream finished",
                  "completed_at": now, "updated_at": now}

        async def expire(tx: Tx) -> list[Job]:
            return await moved(tx, await tx.fail_overdue(now, limit, values), now)

        return await self._transaction(expire)

    @abc.abstractmethod
    async def next_due(self, providers: Sequence[str]) -> int | None:
        """When the next non-terminal job of those providers falls due: the earliest
        ``run_after`` of an unleased one, or ``lease_until`` of one whose lease will
        lapse and that :meth:`claim_due` then takes (pending, or with an upstream id;
        the others wait for the sweep's :meth:`recover`)."""

    @abc.abstractmethod
    async def renew_leases(self, job_ids: Sequence[str], owner: str, until: int) -> None:
        """Extend ``owner``'s leases on those jobs to ``until`` (steps still running);
        a job no longer leased by ``owner`` is left alone."""

    async def recover(self, owner: str, now: int) -> Recovery:
        """Take back the jobs whose lease, held by another owner, lapsed by ``now``: a
        process that died, or stopped renewing. Never a live lease another replica
        renews. The scheduler calls it at start and on every sweep.

        A job with an upstream id resumes polling; one without (its submit may have
        been cut off) is retried once, then failed, so nothing stays stuck. Claims
        leave such a job to this rule (see :meth:`claim_due`), so the count holds.
        """
        return await self._transaction(lambda tx: _recover(tx, owner, now))

    # -- retention and health ------------------------------------------------------

    @abc.abstractmethod
    async def ended_unswept(self, limit: int, after: tuple[int, str] | None = None
                            ) -> list[Job]:
        """Ended jobs whose blobs the retention sweep has not looked at yet, in
        (completed_at, id) order; with ``after``, only those past that pair, so a
        sweep pages past the jobs it could not finish."""

    @abc.abstractmethod
    async def expired_unswept(self, ended_before: int, limit: int,
                              after: tuple[int, str] | None = None) -> list[Job]:
        """Jobs ended by ``ended_before`` whose results are not swept yet, in the
        order and with the ``after`` of :meth:`ended_unswept`."""

    @abc.abstractmethod
    async def mark_swept(self, job_ids: Sequence[str], level: int) -> None:
        """Record what the sweep deleted: 1 the job's inputs, 2 its results too."""

    @abc.abstractmethod
    async def count_jobs(self) -> Mapping[tuple[str, str, str], int]:
        """Jobs by (model, provider, state), for metrics."""


async def _recover(tx: Tx, owner: str, now: int) -> Recovery:
    resumed = retried = 0
    ended = []
    for job in await tx.orphaned(owner, now):
        values: dict[str, Any] = dict(_UNLEASED)
        if job.state is JobState.PROCESSING:
            values.update(run_after=now, updated_at=now)
            if job.upstream_id is not None:
                resumed += 1
            elif job.recoveries < 1:
                values["recoveries"] = job.recoveries + 1
                retried += 1
            else:
                values.update(state=JobState.FAILED.value, fail_code="interrupted",
                              fail_msg="the gateway restarted twice while this job was "
                                       "being submitted", completed_at=now)
                del values["run_after"]
        found = await tx.update_job(job.id, job.state, job.lease_owner, values)
        if found is not None and found.is_terminal:
            ended.append(found)
    return Recovery(resumed=resumed, retried=retried,
                    failed=tuple(await moved(tx, ended, now)))
