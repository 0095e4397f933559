"""A job whose provider has a free slot is created claimed by this scheduler and
starts at once; when the slots are taken, jobs queue and start in turn."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from muxproxy.auth import hash_key
from muxproxy.clock import ManualClock
from muxproxy.gateway import Submission
from muxproxy.generation import GenerationRequest
from muxproxy.jobs import Job, JobState
from tests.support.gateway import KEY_A, merge, run_gateway
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


async def test_a_job_finishing_with_slots_to_spare_costs_no_scheduler_pass(
        config: dict[str, Any]) -> None:
    # Each pass claims due jobs; a job that finished on a provider with free slots
    # leaves nothing for one to do. A job whose step set its next poll does.
    async with run_gateway(config) as gateway:
        store = gateway.state.store
        passes = 0
        claim = store.claim_due_many

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal passes
            passes += 1
            return await claim(*args, **kwargs)

        store.claim_due_many = counted  # type: ignore[method-assign]
        for n in range(20):
            task_id = await gateway.submit({"model": "demo-image", "prompt": f"n{n}"})
            assert (await gateway.wait_terminal(task_id))["state"] == "completed"
        # Every job was dispatched at creation; had each finish woken the scheduler,
        # each of those passes would have run before the next job finished.
        assert passes <= 1

        task_id = await gateway.submit({"model": "demo-image-async", "prompt": "queued"})
        assert (await gateway.wait_terminal(task_id))["state"] == "completed"
        assert passes >= 2  # its polls were claimed by passes


async def test_a_caller_waiting_for_the_end_subscribes_before_the_job_can_run(
        config: dict[str, Any]) -> None:
    # The OpenAI surface answers when its job ends; it subscribes in before_start,
    # which runs once the job is stored and before it is started.
    async with run_gateway(config) as gateway:
        state = gateway.state
        key = await state.store.key_by_hash(hash_key(KEY_A))
        assert key is not None
        seen: list[tuple[JobState, bool]] = []
        ended: list[asyncio.Future[Job]] = []

        def before_start(job: Job) -> None:
            seen.append((job.state, state.scheduler.running(job.id)))
            ended.append(state.events.waiter(job.id))

        submission = Submission(model="demo-image", client_params={},
                                request=GenerationRequest(prompt="a fox"))
        job = await state.gateway.submit(key, "openai", submission, before_start=before_start)
        assert seen == [(JobState.PENDING, False)]
        finished = await asyncio.wait_for(ended[0], 20)
        assert (finished.id, finished.state) == (job.id, JobState.COMPLETED)
