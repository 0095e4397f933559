"""A job's uploaded reference images (and mask) are deleted when the job ends, on
every path: completed, failed upstream, refused reference, deadline. Its result
images stay."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from muxproxy.pipeline.jobs import Job
from tests.fakes.scripted import serve
from tests.fakes.task import FakeTask
from tests.support.gateway import RunningGateway, base_config, merge, run_gateway
from tests.support.images import png_bytes
from tests.support.references import ImageServer, allow
from tests.support.wait import eventually

MODEL = "gemini-3-pro-image"
UPLOADS = {"image_base64": base64.b64encode(png_bytes(20, 20)).decode(),
           "mask_base64": base64.b64encode(png_bytes(20, 20, (0, 0, 0))).decode()}


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> FakeTask:
    fake = FakeTask()
    await serve(fake, aiohttp_server)
    return fake


def config_for(tmp_path: Path, upstream: FakeTask, **jobs: Any) -> dict[str, Any]:
    return merge(base_config(tmp_path), {
        "jobs": jobs,
        "providers": {"apimodels": {"kind": "task", "base_url": upstream.url,
                                    "api_key": upstream.key, "timeout_seconds": 5}},
        "models": {MODEL: {"routes": [{"provider": "apimodels", "model": MODEL}]}},
        **allow("127.0.0.2/32"),
    })


async def run_to_end(gateway: RunningGateway, body: dict[str, Any]
                     ) -> tuple[dict[str, Any], Job, list[str]]:
    task_id = await gateway.submit({"model": MODEL, "prompt": "p", **UPLOADS, **body})
    job = await gateway.state.store.get_job(task_id)
    assert job is not None
    uploads = [ref.blob for ref in (*job.request.images, job.request.mask)
                if ref is not None and ref.blob is not None]
    assert len(uploads) == 2
    task = await gateway.wait_terminal(task_id)
    storage = gateway.state.storage

    async def all_gone() -> bool:
        return not any([await storage.exists(key) for key in uploads])

    await eventually(all_gone, timeout=5)
    job = await gateway.state.store.get_job(task_id)
    assert job is not None
    return task, job, uploads


async def test_uploads_are_deleted_when_the_job_completes(
        tmp_path: Path, upstream: FakeTask) -> None:
    async with run_gateway(config_for(tmp_path, upstream)) as gateway:
        task, job, uploads = await run_to_end(gateway, {})
        assert task["state"] == "completed", task
        assert job.result is not None
        for image in job.result.images:
            assert await gateway.state.storage.exists(image.key)
    # The upstream had them: they were sent inline before they went.
    assert upstream.bodies[0]["image_base64"] and upstream.bodies[0]["mask_base64"]
    assert not any((tmp_path / "images" / key).exists() for key in uploads)


@pytest.mark.parametrize("case", ["upstream-failed", "invalid-reference", "deadline"])
async def test_uploads_are_deleted_when_the_job_fails(
        tmp_path: Path, upstream: FakeTask, case: str) -> None:
    body: dict[str, Any] = {}
    jobs: dict[str, Any] = {}
    if case == "upstream-failed":
        upstream.fail_with = ("Generation failed", None)
    else:
        upstream.hold, jobs["deadline_seconds"] = True, 0.5
    async with ImageServer("127.0.0.2") as images, run_gateway(
            config_for(tmp_path, upstream, **jobs)) as gateway:
        if case == "invalid-reference":
            body["image_urls"] = [images.url("/missing.png")]
        task, _, _ = await run_to_end(gateway, body)
    expected = {"upstream-failed": "generation_failed", "invalid-reference": "invalid_reference",
                "deadline": "deadline_exceeded"}[case]
    assert (task["state"], task["failCode"]) == ("failed", expected), task
