"""The money rules, shared by every backend: they run inside the transaction that
creates or moves a job (see :class:`~muxproxy.store.tx.Tx`).

A priced job *holds* its price at submit, is *charged* when a worker starts it (the
hold released and a charge written), and is *refunded* (after a charge) or
*released* (before one) when it fails. Each move is a compare-and-swap on the job's
billing state, so it happens at most once; the ledger refuses a second row of a kind
for one job as a backstop."""

from __future__ import annotations

from collections.abc import Sequence

from muxproxy.pipeline.jobs import Job, JobState, evolve
from muxproxy.store.accounts import (
    Billing,
    ConcurrencyLimitReached,
    InsufficientBalance,
    KeyNotFound,
    LedgerKind,
)
from muxproxy.store.tx import Tx

# Billing states a transition may move.
SETTLES = frozenset({Billing.HELD, Billing.CHARGED})


async def check_concurrency(tx: Tx, key_id: str, limit: int) -> None:
    if await tx.active_jobs(key_id) >= limit:
        raise ConcurrencyLimitReached(limit)


async def hold(tx: Tx, key_id: str, job_id: str, model: str, price: int, now: int) -> None:
    """Reserve a new job's price: refused when the balance is short, unless unlimited."""
    funds = await tx.funds(key_id)
    if funds is None:
        raise KeyNotFound(key_id)
    balance, unlimited = funds
    if not unlimited and balance < price:
        raise InsufficientBalance(balance, price)
    await tx.add_ledger(key_id, LedgerKind.HOLD, -price, now, job_id=job_id, model=model)


def _moves(job: Job) -> tuple[list[tuple[LedgerKind, int]], Billing] | None:
    if job.billing == Billing.HELD and job.state is JobState.PROCESSING:
        return [(LedgerKind.RELEASE, job.credits), (LedgerKind.CHARGE, -job.credits)], \
            Billing.CHARGED
    if job.billing == Billing.HELD and job.state is JobState.FAILED:
        return [(LedgerKind.RELEASE, job.credits)], Billing.RELEASED
    if job.billing == Billing.CHARGED and job.state is JobState.FAILED:
        return [(LedgerKind.REFUND, job.credits)], Billing.REFUNDED
    return None


async def settle(tx: Tx, job: Job, now: int) -> Job:
    """Billing for a job that just changed state; the job as it is after."""
    found = _moves(job)
    if found is None:
        return job
    moves, target = found
    if not await tx.set_billing(job.id, job.billing, target.value):
        return job
    for kind, amount in moves:
        await tx.add_ledger(job.key_id, kind, amount, now, job_id=job.id, model=job.model)
    return evolve(job, billing=target.value)


async def moved(tx: Tx, jobs: Sequence[Job], now: int) -> list[Job]:
    """What rides along with jobs' state changes: their billing, and a callback
    delivery for each that ended with a ``callback_url``."""
    settled = [await settle(tx, job, now) if job.billing in SETTLES else job for job in jobs]
    ended = [job for job in settled if job.callback_url is not None and job.is_terminal]
    if ended:
        await tx.insert_deliveries(ended, now)
    return settled
