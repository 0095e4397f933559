"""The contract every Store backend must pass. Add a backend to ``BACKENDS``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.pipeline.jobs import IdempotencyClaim, IllegalTransition, Job, JobState, Lease, NewJob
from muxproxy.store import Recovery, StaleJob, Store
from muxproxy.store.accounts import IdempotencyRecord, IdempotencySuperseded
from muxproxy.store.jobs import JobQuery
from muxproxy.store.sqlite import SqliteStore
from muxproxy.surfaces import SurfaceName
from muxproxy.testing import MemoryStore
from tests.support.postgres import fresh_database

# name -> factory(a folder of the test's own, a fresh PostgreSQL database's URL)
BACKENDS: dict[str, Callable[[Path, str], Store]] = {
    "sqlite": lambda tmp, _: SqliteStore(tmp / "store.db"),
    "sqlite-shared": lambda tmp, _: _shared_sqlite(tmp / "store.db"),
    "memory": lambda tmp, _: MemoryStore(),
    "postgres": lambda _, url: _postgres(url),
}
# Backends that need a PostgreSQL server (tests/support/postgres.py).
ON_POSTGRES = ("postgres",)
# Backends that keep their data when closed and opened again.
DURABLE = ("sqlite", "postgres")
T0 = 1_700_000_000_000
OWNER = "worker-1"


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with _database(request, request.param) as url:
        backend = BACKENDS[request.param](tmp_path, url)
        await backend.open()
        try:
            yield backend
        finally:
            await backend.aclose()


@asynccontextmanager
async def _database(request: pytest.FixtureRequest, backend: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for a backend on PostgreSQL; nothing for the others."""
    if backend not in ON_POSTGRES:
        yield ""
        return
    request.getfixturevalue("postgres_server")  # skips, or under CI fails, without one
    async with fresh_database() as url:
        yield url


def _shared_sqlite(path: Path) -> Store:
    """A file other processes use too (serve --workers N): rate buckets in a table."""
    store = SqliteStore(path)
    store.expect_other_processes()
    return store


def _postgres(url: str) -> Store:
    from muxproxy.store.postgres import PostgresStore

    return PostgresStore(url, pool_size=4)


def new_job(job_id: str, *, key_id: str = "key-a", provider: str = "demo", created: int = T0,
            deadline: int = T0 + 600_000, callback: str | None = None, credits: int = 0,
            max_concurrent: int | None = None) -> NewJob:
    request = GenerationRequest(prompt="a red fox", n=2, size=(512, 256), output_format="png",
                                images=(ImageRef(url="https://example.com/a.png"),),
                                extra={"style": "vivid"})
    return NewJob(id=job_id, key_id=key_id, surface=SurfaceName.NATIVE, model="demo-image",
                  request=request, client_params={"prompt": "a red fox"}, provider=provider,
                  upstream_model="demo-image", callback_url=callback, created_at=created,
                  deadline_at=deadline, credits=credits, max_concurrent=max_concurrent)


async def claim_one(store: Store, job_id: str, now: int = T0) -> Job:
    [job] = [j for j in await store.claim_due("demo", now, 100, OWNER, now + 60_000)
             if j.id == job_id]
    return job


async def test_create_and_get_round_trip(store: Store) -> None:
    created = await store.create_job(new_job("j1", callback="https://example.com/cb"))
    fetched = await store.get_job("j1")
    assert fetched == created
    assert fetched.state is JobState.PENDING
    assert fetched.request.size == (512, 256)
    assert fetched.request.images[0].url == "https://example.com/a.png"
    assert fetched.request.extra == {"style": "vivid"}
    assert fetched.callback_url == "https://example.com/cb"
    assert fetched.credits == 0
    assert fetched.billing == "none"
    assert (fetched.attempts, fetched.recoveries, fetched.polls) == (0, 0, 0)
    assert fetched.run_after == T0


async def test_get_is_scoped_to_the_owning_key(store: Store) -> None:
    await store.create_job(new_job("j1", key_id="key-a"))
    assert await store.get_job("j1", key_id="key-a") is not None
    assert await store.get_job("j1", key_id="key-b") is None
    assert await store.get_job("missing") is None


async def test_duplicate_id_is_refused(store: Store) -> None:
    await store.create_job(new_job("j1"))
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.create_job(new_job("j1"))


async def test_list_newest_first_with_paging(store: Store) -> None:
    for i in range(5):
        await store.create_job(new_job(f"j{i}", created=T0 + i))
    await store.create_job(new_job("other", key_id="key-b"))
    page = await store.list_jobs("key-a", limit=3)
    assert [j.id for j in page] == ["j4", "j3", "j2"]
    rest = await store.list_jobs("key-a", limit=3, before=page[-1].created_at)
    assert [j.id for j in rest] == ["j1", "j0"]


async def test_find_jobs_filters_every_key_newest_first_with_paging(store: Store) -> None:
    for i in range(4):
        await store.create_job(new_job(f"a{i}", created=T0 + i))
    await store.create_job(new_job("b0", key_id="key-b", provider="other", created=T0 + 10))
    failed = await store.create_job(new_job("b1", key_id="key-b", created=T0 + 11))
    await store.transition(failed, JobState.PENDING, JobState.FAILED, now=T0 + 12,
                           fail_code="x", fail_msg="gave up")

    async def ids(**fields: Any) -> list[str]:
        return [j.id for j in await store.find_jobs(JobQuery(**fields))]

    assert await ids() == ["b1", "b0", "a3", "a2", "a1", "a0"]
    assert await ids(key_id="key-b") == ["b1", "b0"]
    assert await ids(state=JobState.FAILED) == ["b1"]
    assert await ids(state=JobState.PENDING, key_id="key-b") == ["b0"]
    assert await ids(provider="other") == ["b0"]
    assert await ids(model="demo-image", since=T0 + 3) == ["b1", "b0", "a3"]
    assert await ids(model="no-such-model") == []
    assert await ids(since=T0 + 1, before=T0 + 3) == ["a2", "a1"]
    page = await store.find_jobs(JobQuery(limit=4))
    assert await ids(before=page[-1].created_at, limit=4) == ["a1", "a0"]
    # Jobs of one millisecond page on by id.
    for name in ("c", "d", "e"):
        await store.create_job(new_job(name, key_id="key-c", created=T0 + 20))
    first = await store.find_jobs(JobQuery(key_id="key-c", limit=2))
    assert [j.id for j in first] == ["e", "d"]
    assert await ids(key_id="key-c", before=T0 + 20, before_id="d") == ["c"]


async def test_list_pages_through_jobs_of_one_millisecond(store: Store) -> None:
    for name in ("a", "b", "c", "d"):
        await store.create_job(new_job(name, created=T0))
    await store.create_job(new_job("older", created=T0 - 1))
    page = await store.list_jobs("key-a", limit=2)
    assert [j.id for j in page] == ["d", "c"]
    last = page[-1]
    rest = await store.list_jobs("key-a", limit=10, before=last.created_at, before_id=last.id)
    assert [j.id for j in rest] == ["b", "a", "older"]


async def test_claim_leases_due_jobs_once(store: Store) -> None:
    await store.create_job(new_job("due", created=T0))
    await store.create_job(new_job("later", created=T0 + 5_000))
    await store.create_job(new_job("elsewhere", provider="other"))
    claimed = await store.claim_due("demo", T0, 10, OWNER, T0 + 60_000)
    assert [j.id for j in claimed] == ["due"]
    assert claimed[0].lease_owner == OWNER
    assert await store.claim_due("demo", T0, 10, "worker-2", T0 + 60_000) == []
    assert [j.id for j in await store.claim_due("demo", T0 + 5_000, 10, OWNER, T0)] == ["later"]


async def test_claim_respects_the_limit(store: Store) -> None:
    for i in range(5):
        await store.create_job(new_job(f"j{i}", created=T0 + i))
    first = await store.claim_due("demo", T0 + 10, 2, OWNER, T0 + 60_000)
    assert [j.id for j in first] == ["j0", "j1"]
    assert await store.claim_due("demo", T0 + 10, 0, OWNER, T0) == []


async def test_concurrent_claims_never_share_a_job(store: Store) -> None:
    for i in range(40):
        await store.create_job(new_job(f"j{i}"))
    batches = await asyncio.gather(*(store.claim_due("demo", T0, 7, f"w{i}", T0 + 60_000)
                                     for i in range(8)))
    ids = [j.id for batch in batches for j in batch]
    assert len(ids) == len(set(ids)) == 40


async def test_happy_path_transitions(store: Store) -> None:
    await store.create_job(new_job("j1"))
    job = await claim_one(store, "j1")
    job = await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0 + 1,
                                 owner=OWNER, release=False, started_at=T0 + 1)
    assert job.state is JobState.PROCESSING
    assert job.lease_owner == OWNER
    job = await store.transition(job, JobState.PROCESSING, JobState.PROCESSING, now=T0 + 2,
                                 owner=OWNER, upstream_id="up-1",
                                 upstream_state={"poll": "https://x/1"}, run_after=T0 + 1000)
    assert job.upstream_id == "up-1"
    assert job.upstream_state == {"poll": "https://x/1"}
    assert job.lease_owner is None
    result = {"images": [{"key": "results/j1/0.png", "content_type": "image/png",
                          "width": 1, "height": 1}]}
    job = await claim_one(store, "j1", now=T0 + 1000)
    job = await store.transition(job, JobState.PROCESSING, JobState.COMPLETED, now=T0 + 3,
                                 owner=OWNER, result=result, completed_at=T0 + 3)
    assert job.state is JobState.COMPLETED
    assert job.result is not None
    assert job.result.images[0].key == "results/j1/0.png"
    assert await store.claim_due("demo", T0 + 10**6, 10, OWNER, T0) == []


@pytest.mark.parametrize("credits", [0, 5])
async def test_what_create_and_transition_return_is_what_is_stored(
        store: Store, credits: int) -> None:
    # Backends may build the job they return instead of reading the row back; it
    # must be the row all the same, billing and lease included.
    key = await store.create_key("payer", "digest-payer", now=T0, credits=100)
    lease = Lease(OWNER, T0 + 60_000)
    job = await store.create_job(replace(new_job("j1", key_id=key.id, credits=credits,
                                                 callback="https://example.com/cb"),
                                         lease=lease))
    assert job == await store.get_job("j1")
    steps: list[tuple[JobState, JobState, bool, dict[str, Any]]] = [
        (JobState.PENDING, JobState.PROCESSING, False, {"started_at": T0 + 1}),
        (JobState.PROCESSING, JobState.PROCESSING, False,
         {"upstream_id": "up-1", "upstream_state": {"poll": "https://x/1"}, "polls": 1}),
        (JobState.PROCESSING, JobState.PROCESSING, False, {"upstream_state": None}),
        (JobState.PROCESSING, JobState.COMPLETED, True,
         {"result": {"images": [{"key": "results/j1/0.png", "content_type": "image/png"}],
                     "revised_prompt": "a fox"}, "completed_at": T0 + 9}),
    ]
    for n, (source, target, release, changes) in enumerate(steps):
        job = await store.transition(job, source, target, now=T0 + n, owner=OWNER,
                                     release=release, **changes)
        assert job == await store.get_job("j1")
    assert job.billing == ("charged" if credits else "none")
    assert job.lease_owner is None and job.result is not None
    assert await store.get_delivery("j1") is not None  # the callback, in the same step
    # A copy that is out of date loses the compare-and-swap like any caller.
    with pytest.raises(StaleJob):
        await store.transition(replace(job, state=JobState.PROCESSING), JobState.PROCESSING,
                               JobState.FAILED, now=T0, owner=OWNER)


@pytest.mark.parametrize(("source", "target"), [
    (JobState.PENDING, JobState.COMPLETED),
    (JobState.PENDING, JobState.PENDING),
    (JobState.PROCESSING, JobState.PENDING),
    (JobState.COMPLETED, JobState.FAILED),
    (JobState.COMPLETED, JobState.PROCESSING),
    (JobState.FAILED, JobState.COMPLETED),
    (JobState.FAILED, JobState.PENDING),
])
async def test_illegal_transitions_are_refused(store: Store, source: JobState,
                                               target: JobState) -> None:
    await store.create_job(new_job("j1"))
    with pytest.raises(IllegalTransition):
        await store.transition("j1", source, target, now=T0)
    job = await store.get_job("j1")
    assert job is not None
    assert job.state is JobState.PENDING


async def test_compare_and_swap_on_the_state(store: Store) -> None:
    await store.create_job(new_job("j1"))
    await store.transition("j1", JobState.PENDING, JobState.PROCESSING, now=T0)
    await store.transition("j1", JobState.PROCESSING, JobState.FAILED, now=T0,
                           fail_code="x", fail_msg="boom")
    # A caller that still believes the job is processing must lose.
    with pytest.raises(StaleJob) as info:
        await store.transition("j1", JobState.PROCESSING, JobState.COMPLETED, now=T0)
    assert info.value.actual is JobState.FAILED
    job = await store.get_job("j1")
    assert job is not None
    assert (job.state, job.fail_msg) == (JobState.FAILED, "boom")


async def test_cas_requires_the_lease_owner(store: Store) -> None:
    await store.create_job(new_job("j1"))
    await claim_one(store, "j1")
    with pytest.raises(StaleJob):
        await store.transition("j1", JobState.PENDING, JobState.PROCESSING, now=T0,
                               owner="someone-else")


async def test_state_cannot_be_smuggled_in_as_a_change(store: Store) -> None:
    await store.create_job(new_job("j1"))
    with pytest.raises(ValueError, match="state"):
        await store.transition("j1", JobState.PENDING, JobState.PROCESSING, now=T0,
                               state="completed")


async def test_expire_overdue_fails_unleased_jobs_only(store: Store) -> None:
    await store.create_job(new_job("idle", deadline=T0 + 10))
    await store.create_job(new_job("leased", deadline=T0 + 10))
    await store.create_job(new_job("fresh", deadline=T0 + 10**6))
    [leased] = [j for j in await store.claim_due("demo", T0, 10, OWNER, T0 + 10**6)
                if j.id == "leased"]
    await store.release("idle", OWNER, now=T0)
    await store.release("fresh", OWNER, now=T0)
    expired = await store.expire_overdue(T0 + 100)
    assert [j.id for j in expired] == ["idle"]
    assert expired[0].state is JobState.FAILED
    assert expired[0].fail_code == "deadline_exceeded"
    assert leased.lease_owner == OWNER


async def test_next_due(store: Store) -> None:
    assert await store.next_due(["demo"]) is None
    await store.create_job(new_job("a", created=T0 + 50))
    await store.create_job(new_job("b", created=T0 + 20))
    await store.create_job(new_job("c", provider="other", created=T0))
    assert await store.next_due(["demo"]) == T0 + 20
    assert await store.next_due(["demo", "other"]) == T0
    assert await store.next_due([]) is None


async def test_a_lapsed_lease_is_claimed_again_earliest_first(store: Store) -> None:
    await store.create_job(new_job("a", created=T0))
    await store.create_job(new_job("b", created=T0 + 5))
    held = await store.claim_due("demo", T0 + 5, 10, "worker-gone", T0 + 1_000)
    assert [j.id for j in held] == ["a", "b"]
    await store.create_job(new_job("c", created=T0 + 20))
    assert [j.id for j in await store.claim_due("demo", T0 + 999, 10, OWNER, T0 + 60_000)
            ] == ["c"]
    taken = await store.claim_due("demo", T0 + 1_000, 10, OWNER, T0 + 60_000)
    assert [j.id for j in taken] == ["a", "b"]
    assert {j.lease_owner for j in taken} == {OWNER}
    assert {j.lease_until for j in taken} == {T0 + 60_000}
    assert await store.claim_due("demo", T0 + 1_000, 10, "worker-3", T0 + 60_000) == []


async def test_next_due_counts_leases_that_will_lapse(store: Store) -> None:
    await store.create_job(new_job("a", created=T0))
    await store.claim_due("demo", T0, 10, "worker-gone", T0 + 1_000)
    assert await store.next_due(["demo"]) == T0 + 1_000
    await store.create_job(new_job("b", created=T0 + 2_000))
    assert await store.next_due(["demo"]) == T0 + 1_000
    assert await store.next_due(["other"]) is None


async def test_renewed_leases_do_not_lapse(store: Store) -> None:
    await store.create_job(new_job("a", created=T0))
    await store.create_job(new_job("b", created=T0 + 2_000))
    await store.claim_due("demo", T0, 10, OWNER, T0 + 1_000)
    await store.renew_leases(["a"], "someone-else", T0 + 900)  # not theirs: no change
    await store.renew_leases(["a"], OWNER, T0 + 5_000)
    assert await store.next_due(["demo"]) == T0 + 2_000
    assert await store.claim_due("demo", T0 + 1_500, 10, "worker-2", T0 + 60_000) == []
    job = await store.get_job("a")
    assert job is not None
    assert (job.lease_owner, job.lease_until) == (OWNER, T0 + 5_000)


async def test_the_retention_sweep_sees_each_ended_job_until_marked(store: Store) -> None:
    for name, ended in (("old", T0 + 10), ("new", T0 + 5_000)):
        await store.create_job(new_job(name))
        job = await claim_one(store, name)
        await store.transition(job, JobState.PENDING, JobState.FAILED, now=ended,
                               owner=OWNER, fail_code="x", fail_msg="x", completed_at=ended)
    await store.create_job(new_job("running"))
    assert [j.id for j in await store.ended_unswept(10)] == ["old", "new"]
    assert [j.id for j in await store.ended_unswept(10, after=(T0 + 10, "old"))] == ["new"]
    assert [j.id for j in await store.ended_unswept(1, after=(T0 + 10, "a"))] == ["old"]
    assert [j.id for j in await store.expired_unswept(T0 + 100, 10)] == ["old"]
    assert await store.expired_unswept(T0 + 100, 10, after=(T0 + 10, "old")) == []
    await store.mark_swept(["old", "new"], 1)
    assert await store.ended_unswept(10) == []
    assert [j.id for j in await store.expired_unswept(T0 + 100, 10)] == ["old"]
    await store.mark_swept(["old"], 2)
    await store.mark_swept(["old"], 1)  # never lowered
    assert [j.id for j in await store.expired_unswept(T0 + 10**6, 10)] == ["new"]


async def test_recover_after_a_crash(store: Store) -> None:
    for name in ("polling", "submitting", "twice", "queued"):
        await store.create_job(new_job(name))
    claimed = await store.claim_due("demo", T0, 10, "dead-worker", T0 + 1_000)
    assert len(claimed) == 4
    for name in ("polling", "submitting", "twice"):
        await store.transition(name, JobState.PENDING, JobState.PROCESSING, now=T0,
                               owner="dead-worker", release=False)
    await store.transition("polling", JobState.PROCESSING, JobState.PROCESSING, now=T0,
                           owner="dead-worker", release=False, upstream_id="up-9")
    await store.transition("twice", JobState.PROCESSING, JobState.PROCESSING, now=T0,
                           owner="dead-worker", release=False, recoveries=1)

    # Live leases (another replica may still renew them) are left alone...
    assert await store.recover("new-worker", T0 + 999) == Recovery()
    assert {j.lease_owner for j in await store.scan_jobs()} == {"dead-worker"}
    # ...and taken back once they lapsed.
    recovery = await store.recover("new-worker", T0 + 1_000)
    assert (recovery.resumed, recovery.retried) == (1, 1)
    assert [j.id for j in recovery.failed] == ["twice"]
    states = {n: await store.get_job(n) for n in ("polling", "submitting", "twice", "queued")}
    assert all(j is not None and j.lease_owner is None for j in states.values())
    polling, submitting, twice, queued = (states[n] for n in
                                          ("polling", "submitting", "twice", "queued"))
    assert polling is not None and polling.upstream_id == "up-9"
    assert polling.state is JobState.PROCESSING
    assert submitting is not None and submitting.recoveries == 1
    assert twice is not None and twice.state is JobState.FAILED
    assert twice.fail_code == "interrupted"
    assert queued is not None and queued.state is JobState.PENDING
    # Everything not failed is claimable again at once.
    again = await store.claim_due("demo", T0 + 1_000, 10, "new-worker", T0 + 10**6)
    assert {j.id for j in again} == {"polling", "submitting", "queued"}


async def test_a_claim_leaves_a_cut_off_submit_of_another_owner_to_recovery(
        store: Store) -> None:
    for name in ("queued", "polling", "submitting", "mine"):
        await store.create_job(new_job(name))
    await store.claim_due("demo", T0, 3, "dead-worker", T0 + 1_000)
    await store.claim_due("demo", T0, 1, OWNER, T0 + 1_000)
    for name, owner in (("polling", "dead-worker"), ("submitting", "dead-worker"),
                        ("mine", OWNER)):
        await store.transition(name, JobState.PENDING, JobState.PROCESSING, now=T0,
                               owner=owner, release=False)
    await store.transition("polling", JobState.PROCESSING, JobState.PROCESSING, now=T0,
                           owner="dead-worker", release=False, upstream_id="up-1")
    # Not due while the leases live; then due when they lapse, except the cut-off
    # submit of another owner, which only recovery takes (it counts the interruption).
    assert await store.next_due(["demo"]) == T0 + 1_000
    assert await store.claim_due("demo", T0 + 999, 10, "replica-2", T0 + 9_000) == []
    taken = await store.claim_due("demo", T0 + 1_000, 10, "replica-2", T0 + 9_000)
    assert sorted(j.id for j in taken) == ["polling", "queued"]
    # The two left are not waited for (the sweep claims or recovers them), but the
    # owner of "mine" may take it back.
    assert await store.next_due(["demo"]) == T0 + 9_000
    [own] = await store.claim_due("demo", T0 + 1_000, 10, OWNER, T0 + 9_000)
    assert own.id == "mine"
    recovery = await store.recover("replica-2", T0 + 1_000)
    assert (recovery.resumed, recovery.retried, recovery.failed) == (0, 1, ())
    [retried] = await store.claim_due("demo", T0 + 1_000, 10, "replica-2", T0 + 9_000)
    assert (retried.id, retried.recoveries) == ("submitting", 1)


async def test_recover_leaves_own_leases_alone(store: Store) -> None:
    await store.create_job(new_job("mine"))
    await claim_one(store, "mine")
    recovery = await store.recover(OWNER, T0 + 10**7)  # lapsed, but its own
    assert (recovery.resumed, recovery.retried, recovery.failed) == (0, 0, ())
    job = await store.get_job("mine")
    assert job is not None
    assert job.lease_owner == OWNER


async def test_count_jobs(store: Store) -> None:
    await store.create_job(new_job("a"))
    await store.create_job(new_job("b"))
    await store.transition("b", JobState.PENDING, JobState.FAILED, now=T0, fail_msg="x")
    assert await store.count_jobs() == {("demo-image", "demo", "pending"): 1,
                                        ("demo-image", "demo", "failed"): 1}


async def test_keys_upsert_and_lookup(store: Store) -> None:
    first = await store.upsert_key("dev", "hash-1", now=T0)
    assert await store.key_by_hash("hash-1") == first
    moved = await store.upsert_key("dev", "hash-2", now=T0 + 1)
    assert moved.id == first.id
    assert await store.key_by_hash("hash-1") is None
    assert await store.key_by_hash("hash-2") == moved


@pytest.mark.parametrize("name", DURABLE)
async def test_store_survives_reopen(tmp_path: Path, request: pytest.FixtureRequest,
                                     name: str) -> None:
    async with _database(request, name) as url:
        factory = BACKENDS[name]
        first = factory(tmp_path, url)
        await first.open()
        await first.create_job(new_job("kept"))
        await first.aclose()
        second = factory(tmp_path, url)
        await second.open()
        try:
            job = await second.get_job("kept")
            assert job is not None
            assert job.request.prompt == "a red fox"
        finally:
            await second.aclose()


async def test_writes_are_visible_at_once_while_other_reads_run(store: Store) -> None:
    """Read-your-writes under load: a job is found as soon as ``create_job`` returns
    and its new state as soon as ``transition`` returns, whatever other readers are
    in the middle of (a client polls the task id it was just given)."""
    for i in range(10):
        await store.create_job(new_job(f"bg{i}"))
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            await store.list_jobs("key-a", limit=10)

    readers = [asyncio.create_task(reader()) for _ in range(4)]
    try:
        stale = []
        for i in range(20):
            created = await store.create_job(new_job(f"n{i}"))
            if await store.get_job(created.id) is None:
                stale.append(f"n{i} not found")
            failed = await store.transition(created, JobState.PENDING, JobState.FAILED,
                                            now=T0, fail_code="x", fail_msg="gave up")
            seen = await store.get_job(failed.id)
            if seen is None or seen.state is not JobState.FAILED:
                stale.append(f"n{i} seen as {seen and seen.state}")
        assert stale == []
    finally:
        stop.set()
        await asyncio.gather(*readers)


async def test_credits_move_at_most_once_whatever_the_steps(store: Store) -> None:
    """Held at submit, charged once however many steps the job takes, refunded once;
    a released hold is never charged; the balance is always the ledger's sum."""
    key = await store.create_key("payer", "digest-payer", now=T0, credits=100)
    charged = await store.create_job(new_job("charged", key_id=key.id, credits=7))
    released = await store.create_job(new_job("released", key_id=key.id, credits=5))
    job = await claim_one(store, "charged")
    job = await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0,
                                 owner=OWNER, release=False, started_at=T0)
    for step in range(3):  # submit, polls, retries: no new charge
        job = await store.transition(job, JobState.PROCESSING, JobState.PROCESSING,
                                     now=T0 + step, polls=step)
    await store.transition(job, JobState.PROCESSING, JobState.FAILED, now=T0 + 9,
                           fail_code="x", fail_msg="gave up")
    with pytest.raises((IllegalTransition, StaleJob)):
        await store.transition(job, JobState.PROCESSING, JobState.FAILED, now=T0 + 10,
                               fail_code="x", fail_msg="again")
    await store.transition(released, JobState.PENDING, JobState.FAILED, now=T0,
                           fail_code="deadline", fail_msg="never started")
    rows = sorted((e.job_id, e.kind.value, e.amount)
                  for e in await store.ledger(key.id) if e.job_id)
    assert rows == [("charged", "charge", -7), ("charged", "hold", -7),
                    ("charged", "refund", 7), ("charged", "release", 7),
                    ("released", "hold", -5), ("released", "release", 5)]
    final = await store.get_key(key.id)
    assert final is not None and final.balance == 100 == await store.ledger_sum(key.id)
    assert {j.id: j.billing for j in await store.list_jobs(key.id)} == {
        "charged": "refunded", "released": "released"}
    assert charged.billing == "held"


# -- idempotency: a key bound to its job ------------------------------------------

async def test_an_idempotency_key_is_bound_by_the_job_insert(store: Store) -> None:
    key = await store.create_key("payer", "digest-payer", now=T0, credits=100)
    claim = await store.idempotency_begin(key.id, "k", "hash-1", now=T0, ttl_ms=60_000,
                                          owner=OWNER, create_step_ms=30_000)
    assert isinstance(claim, IdempotencyClaim)
    # While the first request creates its job, a retry sees the key reserved.
    waiting = await store.idempotency_begin(key.id, "k", "hash-1", now=T0 + 1,
                                            ttl_ms=60_000, owner=OWNER, create_step_ms=30_000)
    assert waiting == IdempotencyRecord(request_hash="hash-1", job_id=None)
    job = await store.create_job(replace(new_job("j1", key_id=key.id, credits=5),
                                         idempotency=claim))
    await store.idempotency_release(claim)  # bound: nothing to drop
    for owner in (OWNER, "another-process"):
        found = await store.idempotency_begin(key.id, "k", "hash-1", now=T0 + 2,
                                              ttl_ms=60_000, owner=owner,
                                              create_step_ms=30_000)
        assert found == IdempotencyRecord(request_hash="hash-1", job_id=job.id)
    # Another key's same Idempotency-Key is its own.
    other = await store.create_key("other", "digest-other", now=T0)
    assert isinstance(await store.idempotency_begin(
        other.id, "k", "hash-1", now=T0, ttl_ms=60_000, owner=OWNER,
        create_step_ms=30_000), IdempotencyClaim)


async def test_a_reservation_whose_create_step_is_over_is_taken_over(store: Store) -> None:
    key = await store.create_key("payer", "digest-payer", now=T0, credits=100)
    args: dict[str, Any] = {"ttl_ms": 600_000, "create_step_ms": 30_000}
    first = await store.idempotency_begin(key.id, "k", "h", now=T0, owner=OWNER, **args)
    # Another process's reservation is leased like this one's: it may be a live
    # replica still creating the job, so a retry there hears "in progress"...
    assert await store.idempotency_begin(key.id, "k", "h", now=T0 + 29_999, owner="new",
                                         **args) == IdempotencyRecord("h", None)
    # ...until the lease lapses (its process died): then the retry takes it over.
    second = await store.idempotency_begin(key.id, "k", "h", now=T0 + 30_000, owner="new",
                                           **args)
    # Made by this process, and its create step is long over: taken over too.
    third = await store.idempotency_begin(key.id, "k", "h", now=T0 + 60_001, owner="new",
                                          **args)
    assert isinstance(first, IdempotencyClaim) and isinstance(second, IdempotencyClaim)
    assert isinstance(third, IdempotencyClaim)
    assert len({first.token, second.token, third.token}) == 3
    # Overtaken claims bind nothing: no job, no hold.
    for n, stale in enumerate((first, second)):
        with pytest.raises(IdempotencySuperseded):
            await store.create_job(replace(new_job(f"stale{n}", key_id=key.id, credits=5),
                                           idempotency=stale))
        assert await store.get_job(f"stale{n}") is None
        await store.idempotency_release(stale)  # not theirs to drop any more
    assert await store.ledger_sum(key.id) == 100
    await store.create_job(replace(new_job("j1", key_id=key.id), idempotency=third))
    found = await store.idempotency_begin(key.id, "k", "h", now=T0 + 60_002, owner="new",
                                          **args)
    assert found == IdempotencyRecord(request_hash="h", job_id="j1")


async def test_a_released_reservation_lets_the_retry_run(store: Store) -> None:
    key = await store.create_key("payer", "digest-payer", now=T0)
    args: dict[str, Any] = {"ttl_ms": 600_000, "create_step_ms": 30_000, "owner": OWNER}
    claim = await store.idempotency_begin(key.id, "k", "h", now=T0, **args)
    assert isinstance(claim, IdempotencyClaim)
    await store.idempotency_release(claim)
    assert isinstance(await store.idempotency_begin(key.id, "k", "h2", now=T0 + 1, **args),
                      IdempotencyClaim)
