"""A job whose lease could not be handed back (the database refused the step's
last write, and every try of it again) is taken up again once the lease lapses,
long before its deadline; a step that outlives its lease keeps it."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from muxproxy.clock import ManualClock
from muxproxy.errors import StoreUnavailable
from muxproxy.pipeline.jobs import Job, JobState
from muxproxy.pipeline.runner import WRITE_RETRY_SECONDS
from tests.support.gateway import RunningGateway, merge, run_gateway
from tests.support.wait import eventually

SLOW = {"database": {"busy_timeout_seconds": 0.2},
        "providers": {"demo-slow": {"kind": "demo", "timeout_seconds": 20,
                                    "options": {"delay_seconds": 1}}},
        "jobs": {"lease_margin_seconds": 10, "deadline_seconds": 600},
        "models": {"slow": {"routes": [{"provider": "demo-slow", "model": "slow"}]}}}


async def stored(gw: RunningGateway, job_id: str) -> Job:
    job = await gw.state.store.get_job(job_id)
    assert job is not None
    return job


def refused_writes(gw: RunningGateway, job_id: str, monkeypatch: pytest.MonkeyPatch
                   ) -> list[JobState]:
    """The states the job's writes the database refused were to move it to."""
    store = gw.state.store
    transition = store.transition
    refused: list[JobState] = []

    async def counted(job: Job | str, expected: JobState, target: JobState,
                      **kwargs: Any) -> Job:
        try:
            return await transition(job, expected, target, **kwargs)
        except StoreUnavailable:
            if (job if isinstance(job, str) else job.id) == job_id:
                refused.append(target)
            raise

    monkeypatch.setattr(store, "transition", counted)
    return refused


async def test_a_lease_left_by_a_failed_release_is_taken_up_when_it_lapses(
        config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    async with run_gateway(merge(config, SLOW), clock=clock) as gw:
        scheduler = gw.state.scheduler
        task_id = await gw.submit({"model": "slow", "prompt": "a lighthouse"})

        async def running() -> bool:
            return scheduler.running(task_id)

        await eventually(running)
        claimed = clock.now()
        refused = refused_writes(gw, task_id, monkeypatch)
        other = sqlite3.connect(gw.settings.database.url.removeprefix("sqlite:///"),
                                isolation_level=None)
        try:
            # The step's result, each of its tries, and its release all fail.
            other.execute("BEGIN IMMEDIATE")
            clock.advance(1)  # the demo provider's delay
            for tries, delay in enumerate(WRITE_RETRY_SECONDS, start=1):
                await eventually(lambda: len(refused) == tries)  # noqa: B023
                clock.advance(delay)  # the runner waits this long before the next try

            async def ended() -> bool:
                return not scheduler.running(task_id)

            await eventually(ended)
            assert refused == [JobState.COMPLETED] * (len(WRITE_RETRY_SECONDS) + 1)
            other.execute("ROLLBACK")
        finally:
            other.close()
        left = await stored(gw, task_id)
        assert left.state.value == "processing"
        assert left.lease_owner == scheduler.owner and left.lease_until is not None
        lapse = left.lease_until / 1000
        assert lapse - claimed >= 30  # the provider's timeout plus the margin
        assert lapse > clock.now()

        clock.advance(lapse - clock.now() - 1)  # not yet: nobody touches it
        await gw.state.scheduler.wait_idle()
        assert (await stored(gw, task_id)).lease_until == left.lease_until

        clock.set(lapse)
        await eventually(running)
        clock.advance(1)  # the demo provider's delay
        done = await gw.wait_terminal(task_id)
        assert done["state"] == "completed"
        job = await stored(gw, task_id)
        assert job.completed_at is not None and job.completed_at < job.deadline_at


async def test_a_step_that_outlives_its_lease_keeps_it(config: dict[str, Any]) -> None:
    slower = merge(SLOW, {"providers": {"demo-slow": {"options": {"delay_seconds": 100}}}})
    clock = ManualClock()
    async with run_gateway(merge(config, slower), clock=clock) as gw:
        scheduler = gw.state.scheduler
        task_id = await gw.submit({"model": "slow", "prompt": "a lighthouse"})

        async def running() -> bool:
            return scheduler.running(task_id)

        await eventually(running)
        first = (await stored(gw, task_id)).lease_until
        assert first is not None
        leases = []
        for _ in range(99):  # 30 s leases, renewed by the scheduler's sweeps
            clock.advance(1)
            await asyncio.sleep(0)
            lease = (await stored(gw, task_id)).lease_until
            assert lease is not None and lease > clock.now() * 1000
            leases.append(lease)
        assert leases[-1] > first
        assert scheduler.running(task_id)
        clock.advance(1)
        done = await gw.wait_terminal(task_id)
        assert done["state"] == "completed"
