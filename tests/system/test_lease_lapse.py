"""A job whose lease could not be handed back (the database refused the step's
last write) is taken up again once the lease lapses, long before its deadline;
a step that outlives its lease keeps it."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from muxproxy.clock import ManualClock
from muxproxy.pipeline.jobs import Job
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


async def test_a_lease_left_by_a_failed_release_is_taken_up_when_it_lapses(
        config: dict[str, Any]) -> None:
    clock = ManualClock()
    async with run_gateway(merge(config, SLOW), clock=clock) as gw:
        scheduler = gw.state.scheduler
        task_id = await gw.submit({"model": "slow", "prompt": "a lighthouse"})

        async def running() -> bool:
            return scheduler.running(task_id)

        await eventually(running)
        other = sqlite3.connect(gw.settings.database.url.removeprefix("sqlite:///"),
                                isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # the step's result and its release both fail
            clock.advance(1)

            async def ended() -> bool:
                return not scheduler.running(task_id)

            await eventually(ended)
            other.execute("ROLLBACK")
        finally:
            other.close()
        left = await stored(gw, task_id)
        assert left.state.value == "processing"
        assert left.lease_owner == scheduler.owner and left.lease_until is not None
        lapse = left.lease_until / 1000
        assert lapse - clock.now() >= 25  # the provider's timeout plus the margin

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
