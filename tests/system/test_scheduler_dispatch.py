"""A job whose provider has a free slot is created claimed by this scheduler and
starts at once; when the slots are taken, jobs queue and start in turn."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from muxproxy.auth import hash_key
from muxproxy.clock import ManualClock, now_ms
from muxproxy.gateway import Submission
from muxproxy.generation import GenerationRequest
from muxproxy.pipeline.events import EndWatch
from muxproxy.pipeline.jobs import Job, JobState, NewJob
from muxproxy.store import ApiKey, Store
from muxproxy.surfaces import SurfaceName
from tests.support.gateway import KEY_A, RunningGateway, merge, run_gateway
from tests.support.wait import eventually


async def test_a_free_slot_is_taken_at_creation_and_the_rest_queue_in_order(
        config: dict[str, Any], tmp_path: Path) -> None:
    clock = ManualClock()
    slow = merge(config, {"providers": {"demo": {
        "kind": "demo", "max_concurrency": 1, "options": {"delay_seconds": 5}}}})
    async with run_gateway(slow, clock=clock) as gateway:
        store, owner = gateway.state.store, gateway.state.scheduler.owner

        async def state_of(task_id: str) -> tuple[JobState, str | None]:
            job = await store.get_job(task_id)
            assert job is not None
            return job.state, job.lease_owner

        first = await gateway.submit({"model": "demo-image", "prompt": "one"})
        assert (await store.get_job(first)).lease_owner == owner  # type: ignore[union-attr]
        second = await gateway.submit({"model": "demo-image", "prompt": "two"})
        third = await gateway.submit({"model": "demo-image", "prompt": "three"})
        assert await state_of(second) == await state_of(third) == (JobState.PENDING, None)

        await eventually(lambda: _is(state_of(first), JobState.PROCESSING))
        clock.advance(5)
        assert (await gateway.wait_terminal(first))["state"] == "completed"
        await eventually(lambda: _is(state_of(second), JobState.PROCESSING))
        assert await state_of(third) == (JobState.PENDING, None)  # still behind second
        clock.advance(5)
        assert (await gateway.wait_terminal(second))["state"] == "completed"
        await eventually(lambda: _is(state_of(third), JobState.PROCESSING))
        assert (await state_of(third))[1] == owner
        clock.advance(5)
        assert (await gateway.wait_terminal(third))["state"] == "completed"


async def _is(pending: Any, state: JobState) -> bool:
    return bool((await pending)[0] is state)


async def _key(gateway: RunningGateway) -> ApiKey:
    key = await gateway.state.store.key_by_hash(hash_key(KEY_A))
    assert key is not None
    return key


class Passes:
    """Counts the scheduler's passes: each claims due jobs once."""

    def __init__(self, store: Store) -> None:
        self.count = 0
        self.seen = asyncio.Event()
        self._claim = store.claim_due_many
        store.claim_due_many = self._counted  # type: ignore[method-assign]

    async def _counted(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        self.seen.set()
        return await self._claim(*args, **kwargs)


async def _twenty_jobs(gateway: RunningGateway) -> None:
    for n in range(20):
        task_id = await gateway.submit({"model": "demo-image", "prompt": f"n{n}"})
        assert (await gateway.wait_terminal(task_id))["state"] == "completed"


async def test_a_job_finishing_with_slots_to_spare_costs_no_scheduler_pass(
        config: dict[str, Any]) -> None:
    # Each pass claims due jobs; a job that finished on a provider with free slots
    # leaves nothing for one to do. A job whose step set its next poll does. The
    # clock stands still unless told, so no timed sweep adds a pass of its own.
    clock = ManualClock()
    async with run_gateway(config, clock=clock) as gateway:
        passes = Passes(gateway.state.store)
        await _twenty_jobs(gateway)
        # Every job was dispatched at creation; had each finish woken the scheduler,
        # each of those passes would have run before the next job finished.
        assert passes.count <= 1

        task_id = await gateway.submit({"model": "demo-image-async", "prompt": "queued"})
        async with asyncio.timeout(20):
            while (await gateway.task(task_id))["state"] not in ("completed", "failed"):
                clock.advance(0.05)  # brings its next poll due
                await asyncio.sleep(0.01)
        assert (await gateway.task(task_id))["state"] == "completed"
        assert passes.count >= 2  # its polls were claimed by passes


async def test_a_caller_waiting_for_the_end_subscribes_before_the_job_can_run(
        config: dict[str, Any]) -> None:
    # The OpenAI surface answers when its job ends; it subscribes in before_start,
    # which runs once the job is stored and before it is started.
    async with run_gateway(config) as gateway:
        state = gateway.state
        key = await _key(gateway)
        seen: list[tuple[JobState, bool]] = []
        ended: list[asyncio.Future[Job | None]] = []

        def before_start(job: Job) -> None:
            seen.append((job.state, state.scheduler.running(job.id)))
            ended.append(state.events.waiter(job.id))

        submission = Submission(model="demo-image", client_params={},
                                request=GenerationRequest(prompt="a fox"))
        job = await state.gateway.submit(key, SurfaceName.OPENAI, submission,
                                         before_start=before_start)
        assert seen == [(JobState.PENDING, False)]
        finished = await asyncio.wait_for(ended[0], 20)
        assert finished is not None  # ended here: published with the job, not a nudge
        assert (finished.id, finished.state) == (job.id, JobState.COMPLETED)


def _one_slow_slot(config: dict[str, Any]) -> dict[str, Any]:
    return merge(config, {"providers": {"demo": {
        "kind": "demo", "max_concurrency": 1, "options": {"delay_seconds": 5}}}})


def _submission(prompt: str) -> Submission:
    return Submission(model="demo-image", client_params={},
                      request=GenerationRequest(prompt=prompt))


async def test_a_failing_before_start_still_starts_the_job_it_was_told_of(
        config: dict[str, Any]) -> None:
    clock = ManualClock()
    async with run_gateway(_one_slow_slot(config), clock=clock) as gateway:
        state = gateway.state
        key = await _key(gateway)

        def failing(job: Job) -> None:
            raise RuntimeError("the caller's hook broke")

        with pytest.raises(RuntimeError, match="hook broke"):
            await state.gateway.submit(key, SurfaceName.OPENAI, _submission("one"),
                                       before_start=failing)
        [first] = await state.store.list_jobs(key.id)
        # Stored, so it runs: the provider's only slot is not left taken by a job
        # that never starts, and the next job gets it in turn.
        second = await state.gateway.submit(key, SurfaceName.OPENAI, _submission("two"))
        await _finishes(state.store, first.id, clock)
        await _finishes(state.store, second.id, clock)


async def _finishes(store: Store, job_id: str, clock: ManualClock) -> None:
    """Moves the clock on, past each demo delay, until the job completed."""

    async def completed() -> bool:
        clock.advance(5)
        return await _is(_state(store, job_id), JobState.COMPLETED)

    await eventually(completed)


async def test_a_caller_that_gives_up_while_its_job_is_created_leaves_no_wait_behind(
        config: dict[str, Any]) -> None:
    async with run_gateway(config) as gateway:
        state = gateway.state
        key = await _key(gateway)
        watch = EndWatch(state.events)
        created: list[Job] = []

        def before_start(job: Job) -> None:
            created.append(job)
            watch(job)

        submitting = asyncio.ensure_future(
            state.gateway.submit(key, SurfaceName.OPENAI, _submission("gone"),
                                 before_start=before_start))
        await asyncio.sleep(0)  # the shielded creation is under way
        submitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await submitting
        watch.close()  # what the OpenAI surface does when its request is cancelled
        await eventually(lambda: bool(created))  # the creation went on, shielded
        with pytest.raises(RuntimeError):
            watch.ended  # noqa: B018 - the property raises: nothing was subscribed
        await eventually(lambda: _is(_state(state.store, created[0].id), JobState.COMPLETED))
        assert not state.events._waiters


async def test_a_slot_given_back_unused_starts_a_job_that_waited_for_it(
        config: dict[str, Any]) -> None:
    # A create that fails hands back the slot it reserved. A pass that ran meanwhile
    # saw the provider full and skipped its due jobs: giving the slot back must
    # bring a pass, not leave them to the next sweep (the clock here never moves).
    async with run_gateway(_one_slow_slot(config), clock=ManualClock()) as gateway:
        state = gateway.state
        store, scheduler = state.store, state.scheduler
        passes = Passes(store)
        assert scheduler.reserve("demo") is not None  # a create in progress holds it
        waiting = await gateway.submit({"model": "demo-image", "prompt": "waits"})
        await passes.seen.wait()  # the pass its submit woke, with the only slot taken
        assert (await store.get_job(waiting)).lease_owner is None  # type: ignore[union-attr]
        seen = passes.count
        scheduler.unreserve("demo")  # that create failed
        await eventually(lambda: scheduler.running(waiting))
        assert passes.count > seen


async def test_a_due_job_left_on_an_unusable_provider_waits_for_a_sweep_quietly(
        config: dict[str, Any]) -> None:
    # A job of a provider that cannot serve (no key, here) is claimed on sweeps only;
    # the time it fell due must not wake the scheduler, or every pass until the next
    # sweep comes at once, back to back.
    keyless = merge(config, {"providers": {"elsewhere": {
        "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}}})  # nothing listens
    clock = ManualClock()
    async with run_gateway(keyless, clock=clock) as gateway:
        store = gateway.state.store
        key = await _key(gateway)
        now = now_ms(clock)
        await store.create_job(NewJob(
            id="left-behind", key_id=key.id, surface=SurfaceName.NATIVE, model="demo-image",
            request=GenerationRequest(prompt="old"), client_params={},
            provider="elsewhere", upstream_model="gpt-image-1", callback_url=None,
            created_at=now, deadline_at=now + 600_000))
        passes = Passes(store)
        gateway.state.scheduler.wake()
        await _twenty_jobs(gateway)  # plenty of turns for a scheduler that spins
        assert passes.count <= 2
        clock.advance(2)  # the sweep takes it up
        await eventually(lambda: _attempted(store, "left-behind"))


async def _attempted(store: Store, job_id: str) -> bool:
    job = await store.get_job(job_id)
    return job is not None and job.attempts > 0


async def _state(store: Store, job_id: str) -> tuple[JobState]:
    job = await store.get_job(job_id)
    assert job is not None
    return (job.state,)
