"""Limits across replicas: three stores on one PostgreSQL database (three pools, as
three gateway processes have) racing on one key. The rate, the concurrency limit
and the credits hold exactly, whichever replica each request reaches; and replicas
starting together with one config file agree on its keys."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from muxproxy.pipeline.jobs import Job, JobState
from muxproxy.store import ConcurrencyLimitReached, InsufficientBalance
from muxproxy.store.accounts import LedgerKind
from muxproxy.store.postgres import PostgresStore
from tests.contract.test_store_contract import OWNER, T0, new_job

REQUESTS = 30


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[list[PostgresStore]]:
    stores = [PostgresStore(postgres_url, pool_size=5) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        yield stores
    finally:
        await asyncio.gather(*(store.aclose() for store in stores))


async def test_replicas_starting_together_upsert_the_config_keys_once(
        replicas: list[PostgresStore]) -> None:
    upserts = [store.upsert_key(f"team{i}", f"digest{i}", now=T0, initial_credits=5)
               for i in range(4) for store in replicas]
    keys = await asyncio.gather(*upserts)
    assert len({key.id for key in keys}) == 4
    for key in keys:
        assert await replicas[0].ledger_sum(key.id) == 5 == key.balance


async def test_the_rate_is_one_bucket_for_every_replica(replicas: list[PostgresStore]) -> None:
    takes = [replicas[i % 3].take_request("key-a", 5, T0 + i) for i in range(REQUESTS)]
    answers = await asyncio.gather(*takes)
    assert sum(answer is None for answer in answers) == 5
    assert all(answer is None or 0 < answer <= 12 for answer in answers)


async def test_the_concurrency_limit_holds_across_replicas(
        replicas: list[PostgresStore]) -> None:
    key = await replicas[0].create_key("team", "digest", now=T0)
    creates = [replicas[i % 3].create_job(new_job(f"j{i}", key_id=key.id, max_concurrent=2))
               for i in range(REQUESTS)]
    outcomes = await asyncio.gather(*creates, return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, ConcurrencyLimitReached)]
    assert len(refused) == REQUESTS - 2
    assert len([o for o in outcomes if isinstance(o, Job)]) == 2


async def test_credits_stay_exact_under_races_across_replicas(
        replicas: list[PostgresStore]) -> None:
    one = replicas[0]
    key = await one.create_key("team", "digest", now=T0, credits=10)
    # 30 jobs at 3 credits against 10: exactly three holds fit, never a fourth.
    creates = [replicas[i % 3].create_job(new_job(f"j{i}", key_id=key.id, credits=3))
               for i in range(REQUESTS)]
    outcomes = await asyncio.gather(*creates, return_exceptions=True)
    assert len([o for o in outcomes if isinstance(o, Job)]) == 3
    assert len([o for o in outcomes if isinstance(o, InsufficientBalance)]) == REQUESTS - 3
    assert await balance(one, key.id) == 1

    # Each replica claims a job and starts it (the charge); one fails it (the
    # refund), and a top-up races them all.
    async def run(index: int) -> None:
        owner = f"{OWNER}-{index}"
        [job] = await replicas[index].claim_due("demo", T0, 1, owner, T0 + 60_000)
        job = await replicas[index].transition(job, JobState.PENDING, JobState.PROCESSING,
                                               now=T0, owner=owner, release=False)
        target = JobState.FAILED if index == 0 else JobState.COMPLETED
        await replicas[index].transition(job, JobState.PROCESSING, target, now=T0, owner=owner)

    await asyncio.gather(*(run(i) for i in range(3)), replicas[1].topup(key.id, 4, now=T0))
    assert await balance(one, key.id) == await one.ledger_sum(key.id) == 1 + 4 + 3
    kinds = Counter(entry.kind for entry in await one.ledger(key.id))
    assert kinds == {LedgerKind.TOPUP: 2, LedgerKind.HOLD: 3, LedgerKind.RELEASE: 3,
                     LedgerKind.CHARGE: 3, LedgerKind.REFUND: 1}


async def balance(store: PostgresStore, key_id: str) -> int:
    key = await store.get_key(key_id)
    assert key is not None
    return key.balance
