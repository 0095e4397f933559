"""The store contract, for every backend: keys, credits and the rules that ride along
with a job's moves (the hold, the concurrency limit, the charge, the refund or release,
the callback of a job that ends), written once in the store's neutral layer."""

from __future__ import annotations

from dataclasses import replace

import pytest

from muxproxy.pipeline.jobs import JobState
from muxproxy.store import (
    ConcurrencyLimitReached,
    InsufficientBalance,
    KeyExists,
    KeyLimits,
    KeyNotFound,
    Store,
)
from muxproxy.store.accounts import LedgerKind
from tests.contract.test_store_contract import OWNER, T0, claim_one, new_job, store

__all__ = ["store"]  # the backend fixture, shared with the job-store contract
DAY = 86_400_000


async def test_keys_are_found_by_id_or_explicitly_by_name_and_names_are_unique(
        store: Store) -> None:
    key = await store.create_key("team", "digest-1", now=T0, credits=5,
                                 limits=KeyLimits(rpm_limit=60, allowed_models=("a", "b")))
    assert await store.get_key(key.id) == key == await store.key_named("team")
    assert await store.get_key("team") is None and await store.key_named(key.id) is None
    assert await store.key_by_hash("digest-1") == key
    assert key.limits.allowed_models == ("a", "b") and key.balance == 5
    with pytest.raises(KeyExists):
        await store.create_key("team", "digest-2", now=T0)
    assert await store.key_by_hash("digest-2") is None
    assert [k.name for k in await store.list_keys()] == ["team"]


async def test_limits_change_and_revocation_holds_its_first_time(store: Store) -> None:
    key = await store.create_key("team", "digest", now=T0)
    changed = await store.update_key(key.id, KeyLimits(unlimited=True, max_concurrent=2))
    assert changed.limits == KeyLimits(unlimited=True, max_concurrent=2)
    assert (await store.get_key(key.id)) == changed
    assert (await store.revoke_key(key.id, now=T0 + 1)).revoked_at == T0 + 1
    assert (await store.revoke_key(key.id, now=T0 + 2)).revoked_at == T0 + 1
    for missing in ("nobody", "team"):  # by id only: a name finds nothing
        for attempt in (store.update_key(missing, KeyLimits()),
                        store.revoke_key(missing, now=T0),
                        store.topup(missing, 5, now=T0)):
            with pytest.raises(KeyNotFound):
                await attempt


async def test_a_legacy_name_equal_to_an_id_never_stands_for_that_id(store: Store) -> None:
    # Names of the id's form were accepted once; the store (unlike the admin API)
    # does not check names, so such a key goes straight in.
    key = await store.create_key("team", "digest-1", now=T0, credits=5)
    legacy = await store.create_key(key.id, "digest-2", now=T0, credits=7)
    assert await store.get_key(key.id) == key and await store.key_named(key.id) == legacy
    limits = KeyLimits(rpm_limit=9)
    assert (await store.update_key(key.id, limits)).id == key.id
    assert (await store.topup(key.id, 1, now=T0 + 1)).id == key.id
    assert (await store.revoke_key(key.id, now=T0 + 2)).id == key.id
    assert await store.get_key(legacy.id) == legacy
    assert await store.get_key(key.id) == replace(key, balance=6, limits=limits,
                                                  revoked_at=T0 + 2)
    # A config key of that name is the legacy key, not the one with that id.
    upserted = await store.upsert_key(key.id, "digest-3", now=T0 + 3)
    assert upserted.id == legacy.id and await store.key_by_hash("digest-3") == upserted
    assert await store.key_by_hash("digest-1") is not None


async def test_requests_per_minute_are_a_token_bucket_per_key(store: Store) -> None:
    assert [await store.take_request("key-a", 60, T0) for _ in range(60)] == [None] * 60
    assert await store.take_request("key-a", 60, T0) == pytest.approx(1.0)
    assert await store.take_request("key-a", 60, T0 + 500) == pytest.approx(0.5)
    assert await store.take_request("key-a", 60, T0 + 1000) is None
    assert await store.take_request("key-b", 2, T0) is None  # a bucket per key
    # A clock a little behind (another replica's) refills nothing and takes nothing back.
    assert await store.take_request("key-a", 60, T0 + 900) == pytest.approx(1.0)
    # Refilled to the burst and no further; a lower limit caps the bucket at once.
    later = T0 + 3_600_000
    assert [await store.take_request("key-a", 60, later) for _ in range(61)].count(None) == 60
    assert [await store.take_request("key-b", 1, later) for _ in range(2)] == \
        [None, pytest.approx(60.0)]


async def test_topups_and_deducts_are_ledger_rows_the_balance_follows(store: Store) -> None:
    key = await store.create_key("team", "digest", now=T0, credits=10)
    await store.topup(key.id, 25, now=T0 + 1, note="invoice 7")
    after = await store.topup(key.id, -5, now=T0 + 2)
    assert after.balance == 30 == await store.ledger_sum(key.id)
    rows = await store.ledger(key.id)
    assert [(e.kind, e.amount, e.note) for e in rows] == [
        (LedgerKind.DEDUCT, -5, None), (LedgerKind.TOPUP, 25, "invoice 7"),
        (LedgerKind.TOPUP, 10, "initial credits")]
    assert [e.kind for e in await store.ledger(key.id, limit=1, before=rows[0].id)] == [
        LedgerKind.TOPUP]


async def test_a_config_key_gets_its_credits_once(store: Store) -> None:
    first = await store.upsert_key("cfg", "h1", now=T0, initial_credits=40)
    again = await store.upsert_key("cfg", "h2", now=T0 + 1, initial_credits=40,
                                   limits=KeyLimits(rpm_limit=5))
    assert again.id == first.id and again.balance == 40
    assert again.limits.rpm_limit == 5 and await store.key_by_hash("h2") == again


async def test_a_short_balance_refuses_the_job_and_leaves_nothing(store: Store) -> None:
    key = await store.create_key("payer", "digest", now=T0, credits=4)
    with pytest.raises(InsufficientBalance) as info:
        await store.create_job(new_job("j1", key_id=key.id, credits=5))
    assert (info.value.balance, info.value.price) == (4, 5)
    assert await store.get_job("j1") is None
    assert await store.ledger_sum(key.id) == 4 == (await store.get_key(key.id)).balance  # type: ignore[union-attr]


async def test_an_unlimited_key_may_go_below_zero(store: Store) -> None:
    key = await store.create_key("free", "digest", now=T0, limits=KeyLimits(unlimited=True))
    await store.create_job(new_job("j1", key_id=key.id, credits=5))
    assert (await store.get_key(key.id)).balance == -5 == await store.ledger_sum(key.id)  # type: ignore[union-attr]


async def test_the_concurrency_limit_counts_unfinished_jobs(store: Store) -> None:
    await store.create_job(new_job("a", max_concurrent=2))
    await store.create_job(new_job("b", max_concurrent=2))
    with pytest.raises(ConcurrencyLimitReached):
        await store.create_job(new_job("c", max_concurrent=2))
    assert await store.get_job("c") is None
    job = await claim_one(store, "a")
    job = await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0,
                                 owner=OWNER, release=False)
    await store.transition(job, JobState.PROCESSING, JobState.COMPLETED, now=T0 + 1,
                           owner=OWNER, completed_at=T0 + 1)
    await store.create_job(new_job("c", max_concurrent=2))


async def test_expiry_releases_the_hold_and_queues_the_callback(store: Store) -> None:
    key = await store.create_key("payer", "digest", now=T0, credits=10)
    await store.create_job(new_job("late", key_id=key.id, credits=6, deadline=T0 + 5,
                                   callback="https://hooks.example.com/cb"))
    [expired] = await store.expire_overdue(T0 + 5)
    assert (expired.state, expired.billing, expired.fail_code) == (
        JobState.FAILED, "released", "deadline_exceeded")
    assert await store.get_job("late") == expired
    assert await store.ledger_sum(key.id) == 10
    delivery = await store.get_delivery("late")
    assert delivery is not None and delivery.next_attempt_at == T0 + 5


async def test_a_failed_recovery_refunds_the_charge_and_queues_the_callback(
        store: Store) -> None:
    key = await store.create_key("payer", "digest", now=T0, credits=10)
    await store.create_job(new_job("cut", key_id=key.id, credits=3,
                                   callback="https://hooks.example.com/cb"))
    [job] = await store.claim_due("demo", T0, 1, "dead", T0 + 10**6)
    job = await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0,
                                 owner="dead", release=False, recoveries=1)
    assert job.billing == "charged" and await store.ledger_sum(key.id) == 7
    recovery = await store.recover(OWNER, T0 + 9)
    [failed] = recovery.failed
    assert (failed.fail_code, failed.billing, failed.completed_at) == (
        "interrupted", "refunded", T0 + 9)
    assert await store.get_job("cut") == failed
    assert await store.ledger_sum(key.id) == 10
    assert (await store.get_delivery("cut")) is not None


async def test_usage_counts_jobs_and_charged_credits_per_day(store: Store) -> None:
    key = await store.create_key("payer", "digest", now=T0, credits=100)
    await store.create_job(new_job("held", key_id=key.id, credits=4))
    await store.create_job(new_job("ran", key_id=key.id, credits=6, created=T0 + DAY))
    job = await claim_one(store, "ran", now=T0 + DAY)
    await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0 + DAY,
                           owner=OWNER)
    rows = await store.usage(key.id, since=T0 - DAY)
    assert [(r.day, r.jobs, r.completed, r.failed, r.credits) for r in rows] == [
        ("2023-11-14", 1, 0, 0, 0), ("2023-11-15", 1, 0, 0, 6)]
    assert await store.usage(key.id, since=T0 + 1) == rows[1:]


async def test_usage_of_every_key_adds_them_together(store: Store) -> None:
    payer = await store.create_key("payer", "digest-1", now=T0, credits=100)
    other = await store.create_key("other", "digest-2", now=T0, credits=100)
    await store.create_job(new_job("p", key_id=payer.id, credits=4))
    await store.create_job(new_job("o", key_id=other.id, credits=3))
    failed = await store.create_job(new_job("f", key_id=other.id, created=T0 + DAY))
    await store.transition(failed, JobState.PENDING, JobState.FAILED, now=T0 + DAY,
                           fail_code="x", fail_msg="gave up")
    rows = await store.usage(None, since=T0 - DAY)
    assert [(r.day, r.model, r.jobs, r.failed) for r in rows] == [
        ("2023-11-14", "demo-image", 2, 0), ("2023-11-15", "demo-image", 1, 1)]
    assert [r.jobs for r in await store.usage(payer.id, since=T0 - DAY)] == [1]
