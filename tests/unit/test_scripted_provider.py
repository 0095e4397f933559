"""muxproxy.testing.ScriptedProvider: a job runs through the real JobRunner, its
real SQLite store and blob storage, with the upstream played by a function and
no server anywhere; backoff waits are moved by the manual clock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from muxproxy.clock import now_ms
from muxproxy.generation import GenerationRequest
from muxproxy.metrics import Metrics
from muxproxy.pipeline.breaker import CircuitBreaker
from muxproxy.pipeline.events import JobEvents
from muxproxy.pipeline.jobs import Job, JobState, NewJob
from muxproxy.pipeline.runner import JobRunner
from muxproxy.providers.base import (
    Call,
    Finished,
    Handle,
    ImageData,
    ImageLink,
    PollOutcome,
    Running,
    SubmitOutcome,
    Submitted,
    Unsupported,
    UpstreamError,
)
from muxproxy.references import ReferenceFetcher
from muxproxy.settings import Settings, parse_settings
from muxproxy.storage import BlobStorage, open_storage
from muxproxy.store import Store, open_store
from muxproxy.surfaces import SurfaceName
from muxproxy.testing import ManualClock, ScriptedProvider
from muxproxy.testing.scripted import Handler
from tests.fakes.images import solid
from tests.support.gateway import base_config, merge
from tests.support.wait import eventually

OWNER = "worker-1"
PNG = solid((10, 200, 30))


@dataclass
class Pipeline:
    settings: Settings
    store: Store
    storage: BlobStorage
    clock: ManualClock
    http: aiohttp.ClientSession
    fetcher: ReferenceFetcher

    def runner(self, provider: ScriptedProvider) -> JobRunner:
        return JobRunner(self.settings, self.store, self.storage, {provider.name: provider},
                         self.http, self.clock, Metrics(), JobEvents(),
                         {provider.name: CircuitBreaker(5, 30.0, self.clock)},
                         self.fetcher)

    async def create(self, provider: ScriptedProvider, request: GenerationRequest) -> str:
        now = now_ms(self.clock)
        job = await self.store.create_job(NewJob(
            id="job-1", key_id="key-a", surface=SurfaceName.NATIVE, model="scripted-image",
            request=request, client_params={"prompt": request.prompt},
            provider=provider.name, upstream_model="scripted-v1", callback_url=None,
            created_at=now, deadline_at=now + 600_000))
        return job.id

    async def step(self, runner: JobRunner, job_id: str) -> Job:
        """Claim the job once it is due (moving the clock there) and run one step."""
        job = await self.store.get_job(job_id)
        assert job is not None
        self.clock.set(job.run_after / 1000)
        now = now_ms(self.clock)
        [claimed] = await self.store.claim_due(job.provider, now, 1, OWNER, now + 60_000)
        await runner.run(claimed, OWNER)
        after = await self.store.get_job(job_id)
        assert after is not None
        return after


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    async with open_pipeline(tmp_path) as opened:
        yield opened


@asynccontextmanager
async def open_pipeline(tmp_path: Path, **config: Any) -> AsyncIterator[Pipeline]:
    settings = parse_settings(merge(base_config(tmp_path), config), {})
    store = open_store(settings.database.url, settings.database)
    await store.open()
    storage = open_storage(settings.storage.url)
    fetcher = ReferenceFetcher(settings.limits)
    try:
        async with aiohttp.ClientSession() as http:
            yield Pipeline(settings, store, storage, ManualClock(), http, fetcher)
    finally:
        await fetcher.aclose()
        await storage.aclose()
        await store.aclose()


def queue(*answers: SubmitOutcome | PollOutcome | UpstreamError) -> Handler:
    """A handler answering each step with the next of ``answers`` (raising errors)."""
    pending = list(answers)

    def handler(step: Call | Handle) -> SubmitOutcome | PollOutcome:
        answer = pending.pop(0)
        if isinstance(answer, UpstreamError):
            raise answer
        return answer

    return handler


async def test_an_async_job_is_submitted_polled_and_stored(pipeline: Pipeline) -> None:
    provider = ScriptedProvider(queue(Submitted("up-1", {"poll": "/tasks/up-1"}),
                                      Running(state={"poll": "/tasks/up-1", "seen": 1}),
                                      Finished(images=(ImageData(PNG),),
                                               revised_prompt="a green square")))
    runner = pipeline.runner(provider)
    job_id = await pipeline.create(provider, GenerationRequest(prompt="a green square"))

    states = [(await pipeline.step(runner, job_id)).state for _ in range(3)]

    assert states == [JobState.PROCESSING, JobState.PROCESSING, JobState.COMPLETED]
    call, first_poll, second_poll = provider.steps
    assert isinstance(call, Call) and call.request.prompt == "a green square"
    assert call.upstream_model == "scripted-v1"
    assert isinstance(first_poll, Handle) and first_poll.upstream_id == "up-1"
    assert first_poll.state == {"poll": "/tasks/up-1"}
    # The state a Running hands back is what the next poll is given.
    assert isinstance(second_poll, Handle) and second_poll.state == {"poll": "/tasks/up-1",
                                                                     "seen": 1}
    job = await pipeline.store.get_job(job_id)
    assert job is not None and job.result is not None
    assert job.result.revised_prompt == "a green square"
    [image] = job.result.images
    assert await pipeline.storage.get(image.key) == PNG
    assert (image.content_type, image.width, image.height) == ("image/png", 32, 24)


async def test_a_transient_error_is_retried_after_the_backoff(pipeline: Pipeline) -> None:
    async def handler(step: Call | Handle) -> SubmitOutcome:
        if len(provider.steps) == 1:
            raise UpstreamError("scripted: busy", transient=True, status=503,
                                retry_after=30.0)
        return Finished(images=(ImageData(PNG),))

    provider = ScriptedProvider(handler)
    runner = pipeline.runner(provider)
    job_id = await pipeline.create(provider, GenerationRequest(prompt="p"))
    started = pipeline.clock.now()

    retrying = await pipeline.step(runner, job_id)
    assert (retrying.state, retrying.attempts, retrying.fail_code) == (
        JobState.PROCESSING, 1, "upstream_unavailable")
    # Retry-After is honoured up to the retry cap (0.05 s in the test config).
    assert retrying.run_after == now_ms(pipeline.clock) + 50
    done = await pipeline.step(runner, job_id)
    assert done.state is JobState.COMPLETED
    assert pipeline.clock.now() > started
    assert [type(step) for step in provider.steps] == [Call, Call]


async def test_a_permanent_error_fails_the_job_and_cancels_upstream(
        pipeline: Pipeline) -> None:
    provider = ScriptedProvider(queue(
        Submitted("up-9"),
        UpstreamError("scripted: the image was moderated", transient=False,
                      code="content_moderated")))
    runner = pipeline.runner(provider)
    job_id = await pipeline.create(provider, GenerationRequest(prompt="p"))

    await pipeline.step(runner, job_id)
    failed = await pipeline.step(runner, job_id)

    assert (failed.state, failed.fail_code, failed.fail_msg) == (
        JobState.FAILED, "content_moderated", "scripted: the image was moderated")
    [canceled] = provider.canceled
    assert canceled.upstream_id == "up-9"


async def test_a_handler_answering_out_of_turn_is_an_adapter_fault(
        pipeline: Pipeline) -> None:
    provider = ScriptedProvider(queue(Running()))
    with pytest.raises(UpstreamError) as caught:
        await provider.submit(Call("job-1", GenerationRequest(prompt="p"), "m", {}, (), None))
    assert (caught.value.code, caught.value.transient) == ("adapter_error", False)


def test_check_is_scripted_too() -> None:
    def refuse_masks(request: GenerationRequest, model: str, params: object) -> None:
        raise Unsupported(f"{model} takes no mask", param="mask")

    provider = ScriptedProvider(queue(), check=refuse_masks)
    with pytest.raises(Unsupported, match="scripted-v1 takes no mask"):
        provider.check(GenerationRequest(prompt="p"), "scripted-v1", {})
    assert ScriptedProvider(queue()).configured


@pytest.mark.parametrize("answer", [Finished(images=(ImageData(PNG),)), Submitted("up-1")],
                         ids=["sync", "async"])
async def test_a_refused_last_write_is_retried_and_the_upstream_called_once(
        tmp_path: Path, answer: SubmitOutcome) -> None:
    async with open_pipeline(tmp_path, database={"busy_timeout_seconds": 0.2}) as pipeline:
        other = sqlite3.connect(pipeline.settings.database.url.removeprefix("sqlite:///"),
                                isolation_level=None)

        def handler(step: Call | Handle) -> SubmitOutcome:
            other.execute("BEGIN IMMEDIATE")  # the step's write, once the upstream answered
            return answer

        provider = ScriptedProvider(handler)
        runner = pipeline.runner(provider)
        job_id = await pipeline.create(provider, GenerationRequest(prompt="p"))
        clock = pipeline.clock
        now = now_ms(clock)
        [claimed] = await pipeline.store.claim_due(provider.name, now, 1, OWNER, now + 60_000)
        try:
            step = asyncio.create_task(runner.run(claimed, OWNER))
            waits = []
            for _ in range(2):  # the write refused twice: the runner waits on the clock
                await eventually(lambda: clock.next_wakeup is not None or step.done())
                assert clock.next_wakeup is not None, step.result()
                waits.append(clock.next_wakeup - clock.now())
                if len(waits) == 2:
                    other.execute("ROLLBACK")
                clock.set(clock.next_wakeup)
            await step
        finally:
            other.close()
        assert waits == [0.5, 1.0]
        job = await pipeline.store.get_job(job_id)
        assert job is not None and job.lease_owner is None
        if isinstance(answer, Finished):
            assert job.state is JobState.COMPLETED and job.result is not None
        else:
            assert (job.state, job.upstream_id) == (JobState.PROCESSING, "up-1")
        assert [type(s) for s in provider.steps] == [Call]


@pytest.mark.parametrize("second", ["not-an-image", "download-failed"])
async def test_a_result_that_fails_takes_the_ones_stored_before_with_it(
        pipeline: Pipeline, second: str) -> None:
    bad = (ImageData(b"<html>not an image</html>") if second == "not-an-image"
           else ImageLink("http://127.0.0.1:1/gone.png"))  # nothing listens on port 1
    provider = ScriptedProvider(queue(*[Finished(images=(ImageData(PNG), bad))] * 9))
    runner = pipeline.runner(provider)
    job_id = await pipeline.create(provider, GenerationRequest(prompt="p", n=2))

    job = await pipeline.step(runner, job_id)
    while not job.is_terminal:  # a failed download is retried, then fails the job
        job = await pipeline.step(runner, job_id)

    assert job.state is JobState.FAILED and job.result is None
    assert stored_files(pipeline.settings) == []


def stored_files(settings: Settings) -> list[Path]:
    root = Path(settings.storage.url.removeprefix("file://"))
    return [p for p in root.rglob("*") if p.is_file()]
