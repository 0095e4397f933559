"""The service layer as the next surfaces (streaming, MCP, a console) will call it:
submit, wait with a deadline and cancellation, result images as bytes or signed
links, and a key's jobs. Real gateway, real SQLite, real image files."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from muxproxy.auth import hash_key
from muxproxy.clock import ManualClock
from muxproxy.errors import Expired, NotFound, StillRunning
from muxproxy.gateway import Submission
from muxproxy.generation import GenerationRequest
from muxproxy.pipeline.jobs import Job, JobState, NewJob
from muxproxy.store import ApiKey
from muxproxy.surfaces import SurfaceName
from muxproxy.validation import UploadedImage
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, merge, run_gateway
from tests.support.images import image_size, png_bytes
from tests.support.wait import eventually


async def _key(gateway: RunningGateway, secret: str = KEY_A) -> ApiKey:
    key = await gateway.state.store.key_by_hash(hash_key(secret))
    assert key is not None
    return key


def _submission(prompt: str, model: str = "demo-image", n: int = 1) -> Submission:
    return Submission(model=model, client_params={"prompt": prompt},
                      request=GenerationRequest(prompt=prompt, n=n, size=(96, 64)))


async def test_submit_wait_and_the_results_as_bytes_and_as_links(
        gateway: RunningGateway) -> None:
    service = gateway.state.gateway
    key = await _key(gateway)
    watch = service.watch()
    try:
        job = await service.submit(key, SurfaceName.NATIVE, _submission("a fox", n=2),
                                   before_start=watch)
        ended = await service.wait(job, 20, watch=watch)
    finally:
        watch.close()
    assert (ended.id, ended.state, ended.surface) == (job.id, JobState.COMPLETED, "native")
    blobs = await service.result_images(ended)
    assert [image_size(blob) for blob in blobs] == [(96, 64), (96, 64)]
    links = await service.result_links(ended)
    assert len(links) == 2
    for link, blob in zip(links, blobs, strict=True):
        async with gateway.http.get(link) as resp:
            assert resp.status == 200
            assert await resp.read() == blob
    assert not gateway.state.events._waiters


async def test_before_it_ends_a_job_has_no_results(gateway: RunningGateway) -> None:
    service = gateway.state.gateway
    job = await service.submit(await _key(gateway), SurfaceName.NATIVE,
                               _submission("queued", model="demo-image-async"))
    assert await service.result_links(job) == []
    assert await service.result_images(job) == []


async def test_a_wait_without_a_watch_sees_a_job_that_ended_already(
        gateway: RunningGateway) -> None:
    service = gateway.state.gateway
    job = await service.submit(await _key(gateway), SurfaceName.MODELMUX, _submission("x"))
    await gateway.wait_terminal(job.id)
    ended = await service.wait(job, 0.01)  # read again once subscribed: no wait at all
    assert ended.state is JobState.COMPLETED
    assert not gateway.state.events._waiters


async def test_a_wait_past_its_deadline_or_through_a_stop_leaves_the_job_running(
        config: dict[str, Any]) -> None:
    # The job is upstream, waiting for its next poll on the manual clock: it cannot
    # end during the test, and no step of it runs in this process.
    async with run_gateway(config, clock=ManualClock()) as gateway:
        service = gateway.state.gateway
        job = await service.submit(await _key(gateway), SurfaceName.OPENAI,
                                   _submission("slow", model="demo-image-async"))
        await asyncio.sleep(0)
        with pytest.raises(StillRunning) as timed_out:
            await service.wait(job, 0.05)
        assert (timed_out.value.status, timed_out.value.job_id) == (504, job.id)
        assert not timed_out.value.stopping
        assert "not ready after 0.05 seconds" in timed_out.value.message

        waiting = asyncio.ensure_future(service.wait(job, 60))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        gateway.state.shutdown.begin()
        async with asyncio.timeout(5):
            with pytest.raises(StillRunning) as stopped:
                await waiting
        assert stopped.value.stopping and "restarting" in stopped.value.message
        current = await gateway.state.store.get_job(job.id)
        assert current is not None and not current.is_terminal
        assert not gateway.state.events._waiters


async def test_a_cancelled_wait_leaves_nothing_subscribed(config: dict[str, Any]) -> None:
    async with run_gateway(config, clock=ManualClock()) as gateway:
        service = gateway.state.gateway
        job = await service.submit(await _key(gateway), SurfaceName.OPENAI,
                                   _submission("gone", model="demo-image-async"))
        waiting = asyncio.ensure_future(service.wait(job, 60))
        await eventually(lambda: gateway.state.events.waiting(job.id) == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert gateway.state.events.waiting(job.id) == 0


async def test_a_keys_jobs_newest_first_and_paged(gateway: RunningGateway) -> None:
    service = gateway.state.gateway
    alpha, bravo = await _key(gateway), await _key(gateway, KEY_B)
    made = [await service.submit(alpha, SurfaceName.NATIVE, _submission(f"p{i}"))
            for i in range(3)]
    theirs = await service.submit(bravo, SurfaceName.NATIVE, _submission("bravo's"))
    listed = await service.list_jobs(alpha)
    assert {job.id for job in listed} == {job.id for job in made}
    created = [job.created_at for job in listed]
    assert created == sorted(created, reverse=True)
    page = await service.list_jobs(alpha, limit=1)
    assert [job.id for job in page] == [listed[0].id]
    older = await service.list_jobs(alpha, before=listed[0].created_at)
    assert all(job.created_at < listed[0].created_at for job in older)
    assert [job.id for job in await service.list_jobs(bravo)] == [theirs.id]
    with pytest.raises(NotFound):
        await service.job_for(alpha, theirs.id)


async def test_result_images_past_retention_are_expired(config: dict[str, Any]) -> None:
    clock = ManualClock()
    async with run_gateway(merge(config, {"storage": {"retention_days": 1}}),
                           clock=clock) as gateway:
        service = gateway.state.gateway
        job = await service.submit(await _key(gateway), SurfaceName.NATIVE, _submission("old"))
        await gateway.wait_terminal(job.id)
        ended = await service.job_for(await _key(gateway), job.id)
        assert len(await service.result_images(ended)) == 1
        clock.advance(86_400)
        with pytest.raises(Expired):
            await service.result_images(ended)


def _with_uploads(prompt: str) -> Submission:
    upload = UploadedImage(png_bytes(20, 20), "image/png")
    return Submission(model="demo-image-async", client_params={"prompt": prompt},
                      request=GenerationRequest(prompt=prompt), uploads=(upload, upload))


def _stored_files(gateway: RunningGateway) -> list[str]:
    root = Path(gateway.settings.storage.url.removeprefix("file://"))
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("fault", ["create-failed", "upload-cancelled"])
async def test_uploads_of_a_job_never_created_are_not_left_behind(
        config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    # On the manual clock the async demo job waits for its first poll: it keeps its
    # uploads until the end of the test.
    async with run_gateway(config, clock=ManualClock()) as gateway:
        service, key = gateway.state.gateway, await _key(gateway)
        if fault == "create-failed":
            create_job = gateway.state.store.create_job

            async def create_fails_once(new: NewJob) -> Job:
                monkeypatch.setattr(gateway.state.store, "create_job", create_job)
                raise RuntimeError("a bug in the store")

            monkeypatch.setattr(gateway.state.store, "create_job", create_fails_once)
            with pytest.raises(RuntimeError, match="a bug in the store"):
                await service.submit(key, SurfaceName.NATIVE, _with_uploads("refused"))
        else:
            put, puts, hanging = service.storage.put, [], asyncio.Event()

            async def second_put_hangs(key: str, data: bytes, content_type: str) -> None:
                puts.append(key)
                if len(puts) == 2:
                    hanging.set()
                    await asyncio.Event().wait()  # until the client hangs up
                await put(key, data, content_type)

            monkeypatch.setattr(service.storage, "put", second_put_hangs)
            submit = asyncio.ensure_future(
                service.submit(key, SurfaceName.NATIVE, _with_uploads("hung up")))
            await hanging.wait()
            submit.cancel()
            with pytest.raises(asyncio.CancelledError):
                await submit
            monkeypatch.setattr(service.storage, "put", put)
        assert _stored_files(gateway) == []
        assert await gateway.state.store.list_jobs(key.id) == []

        job = await service.submit(key, SurfaceName.NATIVE, _with_uploads("kept"))
        uploads = job.request.input_keys()
        assert len(uploads) == 2
        assert _stored_files(gateway) == sorted(uploads)
        assert not (await gateway.state.store.get_job(job.id) or job).is_terminal
