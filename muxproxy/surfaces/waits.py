"""Holding a create call open until its job ends (the OpenAI surface answers with
the image itself): how long, and what ends the wait early."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from muxproxy.app_state import AppState
from muxproxy.jobs import Job
from muxproxy.logs import get_logger
from muxproxy.scheduler import SWEEP_SECONDS
from muxproxy.settings import Settings

log = get_logger("muxproxy.waits")


def wait_seconds(settings: Settings) -> float:
    """``surfaces.openai_wait_seconds``, or by default the job's whole life: its
    deadline, plus the time the scheduler may take to notice a deadline passed."""
    return settings.surfaces.openai_wait_seconds or \
        settings.jobs.deadline_seconds + SWEEP_SECONDS + 1


class Disconnected:
    pass


class Stopping:
    pass


async def wait_for(request: Request, state: AppState, job: Job, waiter: asyncio.Future[Job],
                   timeout: float) -> Job | Disconnected | Stopping | None:
    """The job once terminal (``waiter``, subscribed before it could start); a marker
    if the client hangs up or the gateway stops first; None on timeout."""
    if waiter.done():
        state.events.discard(job.id, waiter)
        return waiter.result()
    gone = asyncio.ensure_future(_disconnect(request))
    stopping = asyncio.ensure_future(_stop_answer_due(state, job.id))
    try:
        watched: set[asyncio.Future[Any]] = {waiter, gone, stopping}
        done, _ = await asyncio.wait(watched, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            return waiter.result()
        if gone in done:
            return Disconnected()
        return Stopping() if stopping in done else None
    finally:
        gone.cancel()
        stopping.cancel()
        state.events.discard(job.id, waiter)


async def _stop_answer_due(state: AppState, job_id: str) -> None:
    """Returns when a waiting request must answer because the gateway stops: at once
    if no step of its job is running (no new one starts until the restart), else
    just before the grace period ends, in case the running step finishes the job."""
    await state.shutdown.started.wait()
    if state.scheduler.running(job_id):
        await state.shutdown.answer_due()


async def _disconnect(request: Request) -> None:
    # The body is read: the next ASGI message is the disconnect, if it ever comes.
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:
        log.warning("could not watch for a client disconnect", exc_info=True)
        await asyncio.Event().wait()
