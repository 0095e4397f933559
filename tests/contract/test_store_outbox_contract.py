"""The store contract, for every backend: here, the webhook outbox part.

A job with a ``callback_url`` that turns terminal (by transition, by deadline
expiry, by a failed recovery) gets its pending delivery in the same transaction;
deliveries are leased, attempted, re-armed and inspected through these methods.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from muxproxy.generation import GenerationRequest
from muxproxy.pipeline.jobs import Job, JobState, NewJob
from muxproxy.store import Store
from muxproxy.store.schema import MIGRATIONS
from muxproxy.store.sqlite import SqliteStore, _statements
from muxproxy.surfaces import SurfaceName
from muxproxy.webhooks.outbox import Attempt, DeliveryPending, DeliveryStatus, Verdict
from tests.contract.test_store_contract import store

__all__ = ["store"]  # the backend fixture, shared with the job-store contract

T0 = 1_700_000_000_000
HOOK = "https://hooks.example.com/muxproxy?token=abc"


async def new_job(store: Store, job_id: str, *, callback: str | None = HOOK,
                  key_id: str = "key_a", deadline: int = T0 + 600_000) -> Job:
    return await store.create_job(NewJob(
        id=job_id, key_id=key_id, surface=SurfaceName.NATIVE, model="m",
        request=GenerationRequest(prompt="p"), client_params={"prompt": "p"},
        provider="demo", upstream_model="demo-image", callback_url=callback, created_at=T0,
        deadline_at=deadline))


async def finished(store: Store, job_id: str, *, callback: str | None = HOOK,
                   state: JobState = JobState.COMPLETED, at: int = T0 + 5_000) -> Job:
    job = await new_job(store, job_id, callback=callback)
    job = await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0,
                                 started_at=T0)
    return await store.transition(job, JobState.PROCESSING, state, now=at, completed_at=at)


def verdict(status: DeliveryStatus, next_at: int | None = None) -> Verdict:
    return Verdict(status=status, next_attempt_at=next_at, window_ends_at=T0 + 1_800_000,
                   reason=None if status is DeliveryStatus.DELIVERED else "HTTP 500")


async def test_terminal_transition_queues_the_callback(store: Store) -> None:
    job = await new_job(store, "j1")
    job = await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0 + 1)
    assert await store.get_delivery("j1") is None  # not terminal yet
    await store.transition(job, JobState.PROCESSING, JobState.COMPLETED, now=T0 + 9,
                           completed_at=T0 + 9)
    delivery = await store.get_delivery("j1")
    assert delivery is not None
    assert delivery.id.startswith("msg_")
    assert (delivery.job_id, delivery.key_id, delivery.url) == ("j1", "key_a", HOOK)
    assert delivery.host == "hooks.example.com:443"
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.next_attempt_at == T0 + 9 and delivery.attempts == 0
    assert await store.get_delivery("j1", key_id="key_b") is None

    await finished(store, "no-hook", callback=None, state=JobState.FAILED)
    assert await store.get_delivery("no-hook") is None


async def test_expiry_and_failed_recovery_queue_callbacks(store: Store) -> None:
    await new_job(store, "late", deadline=T0 + 10)
    [expired] = await store.expire_overdue(T0 + 11)
    assert expired.state is JobState.FAILED
    late = await store.get_delivery("late")
    assert late is not None and late.next_attempt_at == T0 + 11

    # A job interrupted mid-submit twice is failed by recovery.
    job = await new_job(store, "crashed")
    await store.claim_due("demo", T0, 10, "dead-1", T0 + 50)
    await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0,
                           owner="dead-1", release=False)
    await store.recover("dead-2", T0 + 100)  # retried once
    await store.claim_due("demo", T0 + 100, 10, "dead-2", T0 + 150)
    recovery = await store.recover("alive", T0 + 200)
    assert [j.id for j in recovery.failed] == ["crashed"]
    crashed = await store.get_delivery("crashed")
    assert crashed is not None and crashed.next_attempt_at == T0 + 200


async def test_claim_leases_due_deliveries_once(store: Store) -> None:
    await finished(store, "a", at=T0 + 1)
    await finished(store, "b", at=T0 + 2)
    await finished(store, "c", at=T0 + 50)
    assert await store.next_delivery_due() == T0 + 1
    claimed = await store.claim_deliveries(T0 + 10, 10, "me", T0 + 40_000)
    assert [d.job_id for d in claimed] == ["a", "b"]  # c is not due yet
    assert all(d.lease_owner == "me" for d in claimed)
    assert await store.claim_deliveries(T0 + 10, 10, "other", T0 + 40_000) == []
    assert await store.next_delivery_due() == T0 + 50  # before the leases lapse
    # A lapsed lease (its holder died mid-attempt) can be taken.
    again = await store.claim_deliveries(T0 + 40_001, 1, "other", T0 + 80_000)
    assert [d.job_id for d in again] == ["a"]
    await store.release_delivery(claimed[1].id, "me")
    assert await store.claim_deliveries(T0 + 60, 10, "x", T0 + 90_000,
                                        skip_hosts=["hooks.example.com:443"]) == []
    assert {d.job_id for d in await store.claim_deliveries(T0 + 60, 10, "x", T0 + 90_000)} \
        == {"b", "c"}


async def test_record_attempt_numbers_and_applies_the_verdict(store: Store) -> None:
    await finished(store, "a", at=T0)
    [d] = await store.claim_deliveries(T0, 1, "me", T0 + 40_000)
    failed = Attempt(started_at=T0, latency_ms=12, status_code=500, response="oops")
    assert await store.record_attempt(d.id, "intruder", failed,
                                      verdict(DeliveryStatus.PENDING, T0 + 1_000),
                                      now=T0 + 12) is None
    assert await store.list_attempts(d.id) == []

    after = await store.record_attempt(d.id, "me", failed,
                                       verdict(DeliveryStatus.PENDING, T0 + 1_000), now=T0 + 12)
    assert after is not None
    assert (after.attempts, after.round_attempts, after.status) == (1, 1, DeliveryStatus.PENDING)
    assert after.next_attempt_at == T0 + 1_000 and after.lease_owner is None
    assert after.window_ends_at == T0 + 1_800_000 and after.last_error == "HTTP 500"

    [d] = await store.claim_deliveries(T0 + 1_000, 1, "me", T0 + 40_000)
    ok = Attempt(started_at=T0 + 1_000, latency_ms=3, status_code=204)
    done = await store.record_attempt(d.id, "me", ok, verdict(DeliveryStatus.DELIVERED),
                                      now=T0 + 1_003)
    assert done is not None and done.status is DeliveryStatus.DELIVERED
    assert done.delivered_at == T0 + 1_003 and done.next_attempt_at is None
    attempts = await store.list_attempts(d.id)
    assert [(a.number, a.status_code, a.response) for a in attempts] == [
        (1, 500, "oops"), (2, 204, None)]
    assert await store.next_delivery_due() is None
    backlog = await store.delivery_backlog()
    assert (backlog.pending, backlog.oldest_created_at) == (0, None)


async def test_redeliver_rearms_with_the_same_id(store: Store) -> None:
    job = await finished(store, "a", at=T0)
    [d] = await store.claim_deliveries(T0, 1, "me", T0 + 40_000)
    gave_up = Verdict(DeliveryStatus.FAILED, None, T0 + 1_800_000, "gave up")
    await store.record_attempt(d.id, "me", Attempt(started_at=T0, latency_ms=1,
                                                   error="connect_error"), gave_up, now=T0)
    assert (await store.delivery_backlog()).pending == 0
    again = await store.redeliver(job, now=T0 + 3_600_000)
    assert again.id == d.id and again.status is DeliveryStatus.PENDING
    assert again.next_attempt_at == T0 + 3_600_000
    assert (again.attempts, again.round_attempts) == (1, 0)
    assert again.window_ends_at is None and again.last_error is None
    backlog = await store.delivery_backlog()
    assert (backlog.pending, backlog.oldest_created_at) == (1, T0)


async def test_recover_deliveries_drops_only_foreign_leases(store: Store) -> None:
    await finished(store, "a", at=T0)
    await finished(store, "b", at=T0 + 1)
    await finished(store, "c", at=T0 + 2)
    await store.claim_deliveries(T0 + 2, 1, "dead", T0 + 1_000)
    await store.claim_deliveries(T0 + 2, 1, "me", T0 + 10**9)
    await store.claim_deliveries(T0 + 2, 1, "alive", T0 + 10**9)
    # Only the lapsed lease of another owner: never a live replica's, nor our own.
    assert await store.recover_deliveries("me", T0 + 1_000) == 0
    assert await store.recover_deliveries("me", T0 + 1_001) == 1
    [free] = await store.claim_deliveries(T0 + 1_001, 10, "me", T0 + 10**9)
    assert free.job_id == "a"


async def test_a_lapsed_delivery_lease_is_taken_over(store: Store) -> None:
    await finished(store, "a", at=T0)
    await finished(store, "b", at=T0 + 10)
    await store.claim_deliveries(T0 + 10, 10, "dead", T0 + 1_000)
    # Leased deliveries fall due when their lease lapses, and any replica claims them.
    assert await store.next_delivery_due() == T0 + 1_001
    assert await store.claim_deliveries(T0 + 1_000, 10, "replica-2", T0 + 9_000) == []
    taken = await store.claim_deliveries(T0 + 1_001, 10, "replica-2", T0 + 9_000)
    assert [d.job_id for d in taken] == ["a", "b"]
    assert {d.lease_owner for d in taken} == {"replica-2"}


async def test_signing_secrets(store: Store) -> None:
    key = await store.upsert_key("alpha", "hash-a", now=T0)
    assert await store.signing_secret(key.id) is None
    await store.set_signing_secret(key.id, "whsec_one", now=T0)
    await store.set_signing_secret(key.id, "whsec_two", now=T0 + 1)
    stored = await store.signing_secret(key.id)
    assert stored is not None and (stored.secret, stored.created_at) == ("whsec_two", T0 + 1)
    assert await store.delete_signing_secret(key.id) is True
    assert await store.delete_signing_secret(key.id) is False
    assert await store.signing_secret(key.id) is None


async def test_sqlite_terminal_move_and_outbox_row_commit_together(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "atomic.db")
    await store.open()
    try:
        job = await new_job(store, "j")
        job = await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0)
        async with store._write() as db:
            await db.execute("CREATE TRIGGER no_outbox BEFORE INSERT ON webhook_deliveries "
                             "BEGIN SELECT RAISE(ABORT, 'outbox down'); END")
        with pytest.raises(Exception, match="outbox down"):
            await store.transition(job, JobState.PROCESSING, JobState.COMPLETED, now=T0 + 1)
        current = await store.get_job("j")
        assert current is not None and current.state is JobState.PROCESSING
    finally:
        await store.aclose()


async def test_sqlite_upgrades_a_version_1_database(tmp_path: Path) -> None:
    """A database written by the first release, with a job in flight, upgrades in
    place: the job keeps working, gets billing state, and queues its callback."""
    with sqlite3.connect(tmp_path / "old.db") as conn:
        for statement in _statements(MIGRATIONS[0]):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO jobs (id, key_id, surface, model, state, params, client_params, "
            "provider, upstream_model, callback_url, created_at, updated_at, run_after, "
            "deadline_at) VALUES ('before-upgrade', 'key_a', 'native', 'm', 'pending', "
            "'{\"prompt\": \"p\", \"n\": 1}', '{}', 'demo', 'demo-image', ?, ?, ?, ?, ?)",
            (HOOK, T0, T0, T0, T0 + 600_000))
    store = SqliteStore(tmp_path / "old.db")
    await store.open()
    try:
        job = await store.get_job("before-upgrade")
        assert job is not None
        assert job.billing == "none"
        await store.transition(job, JobState.PENDING, JobState.FAILED, now=T0 + 1)
        delivery = await store.get_delivery("before-upgrade")
        assert delivery is not None
        assert delivery.status is DeliveryStatus.PENDING
    finally:
        await store.aclose()
    with sqlite3.connect(tmp_path / "old.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_claim_leaves_out_keys_at_their_limit(store: Store) -> None:
    for job_id, key_id in (("a1", "key_a"), ("b1", "key_b")):
        job = await new_job(store, job_id, key_id=key_id)
        job = await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0)
        await store.transition(job, JobState.PROCESSING, JobState.COMPLETED, now=T0 + 1,
                               completed_at=T0 + 1)
    assert await store.next_delivery_due(skip_keys=["key_a", "key_b"]) is None
    claimed = await store.claim_deliveries(T0 + 10, 10, "me", T0 + 40_000,
                                           skip_keys=["key_a"])
    assert [d.job_id for d in claimed] == ["b1"]


async def test_redeliver_refuses_a_pending_delivery_and_attempts_are_pruned(
        store: Store) -> None:
    job = await finished(store, "a", at=T0)
    with pytest.raises(DeliveryPending):
        await store.redeliver(job, now=T0 + 1)  # the first delivery is still pending
    for n in range(1, 6):
        [d] = await store.claim_deliveries(T0 + n * 1_000, 1, "me", T0 + 10**9)
        await store.record_attempt(d.id, "me", Attempt(started_at=T0, latency_ms=n),
                                   verdict(DeliveryStatus.PENDING, T0 + (n + 1) * 1_000),
                                   now=T0 + n, keep=2)
    assert [a.number for a in await store.list_attempts(d.id)] == [4, 5]
    assert (await store.get_delivery("a")) is not None
