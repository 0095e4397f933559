"""A wait for a job that another process runs: nothing is published here, so the
wait hears of the end by a signal (a nudge: it reads the job) or, should that
signal be lost, by reading the job every ``recheck_seconds``. Real gateway on SQLite;
the other process is played by writing the job's moves straight into the store."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from pytest_aiohttp import AiohttpServer

from muxproxy.clock import now_ms
from muxproxy.notify import EVERY
from muxproxy.pipeline.jobs import Job, JobState
from tests.contract.test_store_contract import new_job
from tests.fakes.fal import FakeFal
from tests.support.gateway import RunningGateway, base_config, merge, run_gateway
from tests.support.wait import eventually
from tests.system.test_cancel import serve

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


async def test_a_signal_heard_while_the_job_runs_here_waits_for_the_step(
        tmp_path: Path, aiohttp_server: AiohttpServer) -> None:
    """On PostgreSQL a process hears its own end signals, often before the step that
    ended the job has announced it here. The waiters are nudged once the step is over:
    none reads a job that the step hands them anyway, and a job ended elsewhere
    meanwhile is still read."""
    fal = FakeFal(queued_polls=0, running_polls=0)
    release, held = asyncio.Event(), []

    async def gate(request: web.Request) -> None:
        if request.method == "POST":  # each job's submit, held until released
            held.append(request.path)
            await release.wait()

    await serve(fal, aiohttp_server, gate)
    config = merge(base_config(tmp_path), {
        "providers": {"fal": {"kind": "fal", "base_url": fal.url, "api_key": fal.key}},
        "models": {"banana": {"routes": [{"provider": "fal", "model": "fal-ai/nano-banana"}]}}})
    async with run_gateway(config) as gw:
        state = gw.state
        ids = [await gw.submit({"model": "banana", "prompt": p}) for p in ("here", "there")]
        await eventually(lambda: len(held) == 2)
        jobs = [await state.store.get_job(i) for i in ids]
        waits = [asyncio.ensure_future(state.gateway.wait(j, 60)) for j in jobs if j]
        await eventually(lambda: all(state.events.waiting(i) == 1 for i in ids))
        # "there" is cancelled by another replica: a compare-and-swap without the lease.
        now = now_ms(state.clock)
        await state.store.transition(ids[1], JobState.PROCESSING, JobState.FAILED, now=now,
                                     fail_code="cancelled", fail_msg="cancelled",
                                     completed_at=now)
        for job_id in ids:
            state.scheduler.heard_end(job_id)
            assert state.events.waiting(job_id) == 1  # not nudged while its step runs
        release.set()
        async with asyncio.timeout(10):
            here, there = await asyncio.gather(*waits)
        assert (here.id, here.state) == (ids[0], JobState.COMPLETED)
        assert (there.id, there.state, there.fail_code) == (ids[1], JobState.FAILED,
                                                            "cancelled")
        # A signal for a job with no step here nudges at once.
        waiting = asyncio.ensure_future(state.gateway.wait(here, 60))
        state.scheduler.heard_end(ids[0])
        async with asyncio.timeout(5):
            assert (await waiting).state is JobState.COMPLETED
