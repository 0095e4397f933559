"""A wait for a job that another process runs: nothing is published here, so the
wait hears of the end by a signal (a nudge: it reads the job) or, should that
signal be lost, by reading the job every ``recheck_seconds``. Real gateway on SQLite;
the other process is played by writing the job's moves straight into the store."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from muxproxy.clock import now_ms
from muxproxy.notify import EVERY
from muxproxy.pipeline.jobs import Job, JobState
from tests.contract.test_store_contract import new_job
from tests.support.gateway import RunningGateway
from tests.support.wait import eventually

ELSEWHERE = "elsewhere"  # a provider no scheduler here serves


async def _run_elsewhere(gateway: RunningGateway, job_id: str) -> Job:
    """The job, created and started by "another replica"."""
    store, now = gateway.state.store, now_ms(gateway.state.clock)
    new = replace(new_job(job_id, provider=ELSEWHERE, created=now), deadline_at=now + 600_000)
    await store.create_job(new)
    [job] = await store.claim_due(ELSEWHERE, now, 1, "other-replica", now + 60_000)
    return await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=now,
                                  owner="other-replica", release=False)


async def _finish_elsewhere(gateway: RunningGateway, job: Job) -> None:
    await gateway.state.store.transition(job, JobState.PROCESSING, JobState.COMPLETED,
                                         now=now_ms(gateway.state.clock), owner="other-replica")


async def test_a_nudge_makes_the_wait_read_the_job(gateway: RunningGateway) -> None:
    events = gateway.state.events
    assert gateway.state.gateway.recheck_seconds is None  # SQLite: no signal can be lost
    job = await _run_elsewhere(gateway, "far-1")
    waiting = asyncio.ensure_future(gateway.state.gateway.wait(job, 60))
    await eventually(lambda: events.waiting(job.id) == 1)
    # "Anything may have changed": it reads, finds the job running, and waits again.
    events.nudge(EVERY)
    assert events.waiting(job.id) == 0
    await eventually(lambda: events.waiting(job.id) == 1)
    assert not waiting.done()
    await _finish_elsewhere(gateway, job)
    events.nudge(job.id)
    async with asyncio.timeout(5):
        ended = await waiting
    assert (ended.id, ended.state) == (job.id, JobState.COMPLETED)
    assert events.waiting(job.id) == 0


async def test_a_lost_signal_delays_the_answer_by_one_recheck_at_most(
        gateway: RunningGateway) -> None:
    service = gateway.state.gateway
    service.recheck_seconds = 0.2  # as on PostgreSQL, shorter
    job = await _run_elsewhere(gateway, "far-2")
    waiting = asyncio.ensure_future(service.wait(job, 60))
    await eventually(lambda: gateway.state.events.waiting(job.id) == 1)
    await _finish_elsewhere(gateway, job)  # and no signal arrives
    async with asyncio.timeout(5):
        ended = await waiting
    assert ended.state is JobState.COMPLETED
    assert gateway.state.events.waiting(job.id) == 0
