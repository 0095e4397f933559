"""Reading a gateway's database from the test process (the gateway may be another
process) through the store interface, and checking what must always hold in it.
Any backend :func:`muxproxy.store.open_store` opens is audited the same way: a
database is named by a SQLite file's path or by any store URL (``postgresql://``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from muxproxy.pipeline.jobs import Job, JobState
from muxproxy.store import Store, open_store
from muxproxy.store.accounts import LedgerEntry
from muxproxy.webhooks.outbox import Delivery, DeliveryStatus

# The ledger rows a job leaves, by its final billing state (price p).
EXPECTED_LEDGER: dict[str, dict[str, int]] = {
    "charged": {"hold": -1, "release": 1, "charge": -1},
    "refunded": {"hold": -1, "release": 1, "charge": -1, "refund": 1},
    "released": {"hold": -1, "release": 1},
    "none": {},
}
ACTIVE = ("pending", "processing")
PAGE = 500
T = TypeVar("T")


# A SQLite file's path, or a store URL (postgresql://...).
Database = Path | str


def store_url(db: Database) -> str:
    return db if isinstance(db, str) and "://" in db else f"sqlite:///{db}"


@asynccontextmanager
async def opened(db: Database) -> AsyncIterator[Store]:
    store = open_store(store_url(db))
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def _every(page: Callable[[str | None], Awaitable[list[T]]],
                 last: Callable[[T], str]) -> list[T]:
    found: list[T] = []
    while batch := await page(last(found[-1]) if found else None):
        found += batch
    return found


async def all_jobs(store: Store) -> list[Job]:
    return await _every(lambda after: store.scan_jobs(after=after, limit=PAGE),
                        lambda job: job.id)


async def all_deliveries(store: Store) -> list[Delivery]:
    return await _every(lambda after: store.scan_deliveries(after=after, limit=PAGE),
                        lambda delivery: delivery.job_id)


async def key_ledger(store: Store, key_id: str) -> list[LedgerEntry]:
    """A key's ledger rows, oldest first."""
    found: list[LedgerEntry] = []
    while batch := await store.ledger(key_id, limit=PAGE,
                                      before=found[-1].id if found else None):
        found += batch
    return found[::-1]


def job_row(job: Job) -> dict[str, Any]:
    """A job as its columns read: states as their names, JSON columns as JSON text."""
    row = dict(vars(job))
    row["params"] = orjson.dumps(job.request.to_json()).decode()
    row["result"] = orjson.dumps(job.result.to_json()).decode() if job.result else None
    return row


async def jobs(db: Database) -> list[dict[str, Any]]:
    async with opened(db) as store:
        return [job_row(job) for job in await all_jobs(store)]


async def job(db: Database, job_id: str) -> dict[str, Any]:
    async with opened(db) as store:
        found = await store.get_job(job_id)
    assert found is not None
    return job_row(found)


async def deliveries(db: Database) -> dict[str, dict[str, Any]]:
    """Callback deliveries by job id."""
    async with opened(db) as store:
        return {d.job_id: dict(vars(d)) for d in await all_deliveries(store)}


async def unfinished(db: Database) -> int:
    """Jobs not terminal yet, plus callbacks still to be delivered."""
    async with opened(db) as store:
        active = sum(n for (_, _, state), n in (await store.count_jobs()).items()
                     if state in ACTIVE)
        return active + (await store.delivery_backlog()).pending


async def phases(db: Database) -> dict[str, int]:
    """How many jobs are in each phase right now."""
    async with opened(db) as store:
        found = await all_jobs(store)
        waiting = {d.job_id for d in await all_deliveries(store)
                   if d.status is DeliveryStatus.PENDING}
    processing = [j for j in found if j.state is JobState.PROCESSING]
    return {
        "pending": sum(j.state is JobState.PENDING for j in found),
        "in_flight_no_upstream_id": sum(j.upstream_id is None for j in processing),
        "submitted_being_polled": sum(j.upstream_id is not None for j in processing),
        "completed_callback_pending": sum(j.state is JobState.COMPLETED and j.id in waiting
                                          for j in found),
    }


async def billing_problems(db: Database) -> list[str]:
    """Everything wrong with the credits: each key's balance must equal the sum of its
    ledger rows; each priced job must be charged if it completed and refunded or
    released if it failed, with exactly the ledger rows that state implies."""
    problems = []
    rows: defaultdict[str, dict[str, int]] = defaultdict(dict)
    async with opened(db) as store:
        for key in await store.list_keys():
            entries = await key_ledger(store, key.id)
            total = sum(entry.amount for entry in entries)
            if total != key.balance:
                problems.append(f"key {key.name}: balance {key.balance} != ledger sum {total}")
            for entry in entries:
                if entry.job_id is not None:
                    rows[entry.job_id][entry.kind.value] = entry.amount
        found = await all_jobs(store)
    for job in found:
        if job.state.value in ACTIVE:
            problems.append(f"job {job.id} is still {job.state}")
            continue
        allowed = {"completed": {"charged"}, "failed": {"refunded", "released"}}
        billing = job.billing if job.credits else "none"
        if job.credits and billing not in allowed[job.state.value]:
            problems.append(f"job {job.id} {job.state} but billing {job.billing}")
            continue
        expected = {kind: sign * job.credits
                    for kind, sign in EXPECTED_LEDGER.get(billing, {}).items()}
        if rows.get(job.id, {}) != expected:
            problems.append(f"job {job.id} ({billing}): ledger {rows.get(job.id)} "
                            f"!= {expected}")
    return problems
