"""The task-API adapter: against the fake apimodels-style upstream, and against a
second real muxproxy."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from pytest_aiohttp import AiohttpServer

from muxproxy.clock import SystemClock
from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.providers.base import Finished, Reference, UpstreamError
from muxproxy.providers.task import TaskProvider
from muxproxy.settings import ProviderSettings, SettingsError
from tests.fakes.scripted import png
from tests.fakes.task import FakeTask
from tests.support.gateway import KEY_A, base_config, merge, run_gateway
from tests.support.provider_calls import (
    accepted_job,
    arrange,
    call_for,
    gateway_config,
    job_end,
    provider_for,
    run_job,
    served,
    upstream_id_of,
)


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> FakeTask:
    return await served(FakeTask(), aiohttp_server)


def adapter(fake: FakeTask, http: aiohttp.ClientSession, **options: Any) -> TaskProvider:
    return provider_for(TaskProvider, http, base_url=fake.url, key=fake.key,
                        name="apimodels", **options)


def task_config(tmp_path: Path, base_url: str, key: str, *,
                jobs: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return gateway_config(
        tmp_path, {"kind": "task", "base_url": base_url, "api_key": key,
                   "timeout_seconds": 5, "options": options},
        {"gpt-image-2-lite": "gpt-image-2-lite", "gemini-3-pro-image": "gemini-3-pro-image",
         "grok-4.2-image": "grok-image/grok-4.2-image", "not-upstream": "no-such-model",
         "remote-demo": "demo-image-async", "remote-sync-demo": "demo-image",
         "remote-failing": "demo-failing"},
        name="apimodels", **(jobs or {}))


# -- the adapter ------------------------------------------------------------------------


async def test_request_fields(upstream: FakeTask, http: aiohttp.ClientSession) -> None:
    first, second, mask = png(8, 8), png(9, 9), png(8, 8, (255, 255, 255))
    request = GenerationRequest(
        prompt="swap the logo", n=2, size=(1024, 1536), quality="low", output_format="jpeg",
        images=(ImageRef(url="https://cdn.example/a.png"), ImageRef(blob="b0"),
                ImageRef(blob="b1")), mask=ImageRef(blob="m"))
    refs = (Reference(url="https://cdn.example/a.png", data=None, content_type=None),
            Reference(url=None, data=first, content_type="image/png"),
            Reference(url=None, data=second, content_type="image/png"))
    outcome = await adapter(upstream, http).submit(call_for(
        request, "gpt-image-2-lite", refs, params={"quality": "medium"},
        mask=Reference(url=None, data=mask, content_type="image/png")))
    assert isinstance(outcome, Finished) and len(outcome.images) == 2
    [body] = upstream.bodies
    assert body == {
        "model": "gpt-image-2-lite", "prompt": "swap the logo", "n": 2, "size": "1024x1536",
        "quality": "medium", "output_format": "jpeg",
        "image_base64": base64.b64encode(first).decode(),
        "image_urls": ["https://cdn.example/a.png",
                       "data:image/png;base64," + base64.b64encode(second).decode()],
        "mask_base64": base64.b64encode(mask).decode()}


async def test_one_url_goes_as_image_url(upstream: FakeTask,
                                         http: aiohttp.ClientSession) -> None:
    request = GenerationRequest(prompt="storm clouds", aspect_ratio="16:9", resolution="2k",
                                images=(ImageRef(url="https://cdn.example/p.jpg"),))
    await adapter(upstream, http).submit(call_for(
        request, "gemini-3-pro-image",
        (Reference(url="https://cdn.example/p.jpg", data=None, content_type=None),)))
    assert upstream.bodies == [{"model": "gemini-3-pro-image", "prompt": "storm clouds",
                                "aspect_ratio": "16:9", "resolution": "2k",
                                "image_url": "https://cdn.example/p.jpg"}]


async def test_error_code_in_a_200_body(upstream: FakeTask,
                                        http: aiohttp.ClientSession) -> None:
    upstream.fail("submit", 200, {"code": 503, "msg": "upstream channel busy", "data": None})
    with pytest.raises(UpstreamError) as caught:
        await adapter(upstream, http).submit(call_for(GenerationRequest(prompt="p"),
                                                      "gemini-3-pro-image"))
    assert caught.value.transient
    assert caught.value.message == "apimodels: upstream channel busy"


def test_base_url_is_required() -> None:
    settings = ProviderSettings(name="up", kind="task", api_key="k")
    with pytest.raises(SettingsError, match="base_url"):
        TaskProvider(settings, None, SystemClock())  # type: ignore[arg-type]


# -- end to end against the fake --------------------------------------------------------


async def test_async_model_completes(tmp_path: Path, upstream: FakeTask) -> None:
    async with run_gateway(task_config(tmp_path, upstream.url, upstream.key)) as gateway:
        task_id = await gateway.submit({"model": "grok-4.2-image", "prompt": "a cat",
                                        "size": "1024x1024", "n": 1})
        task = await gateway.wait_terminal(task_id)
        upstream_id = await upstream_id_of(gateway, task_id)
    assert task["state"] == "completed", task
    assert upstream.tasks[upstream_id]["state"] == "completed"
    assert upstream.bodies == [{"model": "grok-image/grok-4.2-image", "prompt": "a cat",
                                "size": "1024x1024"}]
    assert upstream.counts["poll"] >= 2


async def test_sync_model_completes_at_submit(tmp_path: Path, upstream: FakeTask) -> None:
    async with run_gateway(task_config(tmp_path, upstream.url, upstream.key)) as gateway:
        task_id = await gateway.submit({"model": "gpt-image-2-lite", "prompt": "an otter",
                                        "n": 2, "quality": "low"})
        task = await gateway.wait_terminal(task_id)
        job = await gateway.state.store.get_job(task_id)
    assert task["state"] == "completed", task
    assert len(task["resultUrls"]) == 2
    assert job is not None and job.upstream_id is None
    assert (upstream.counts["submit"], upstream.counts["poll"]) == (1, 0)


@pytest.mark.parametrize(("setup", "model", "fail_msg", "fail_code"), [
    ({"fail_with": ("Content policy violation", "content_policy")}, "gemini-3-pro-image",
     "apimodels: Content policy violation", "content_policy"),
    ({"fail_with": ("Generation failed", None)}, "gpt-image-2-lite",
     "apimodels: Generation failed", "generation_failed"),
    ({"credits": 0}, "gemini-3-pro-image",
     "apimodels: Payment Required -- insufficient credits", "upstream_error"),
    ({"key": "wrong-key"}, "gemini-3-pro-image",
     "apimodels: Unauthorized -- invalid API key", "upstream_error"),
    ({}, "not-upstream", "apimodels: Bad Request -- unsupported model: no-such-model",
     "upstream_error"),
], ids=["failed", "failed-at-submit", "402", "401", "400"])
async def test_permanent_failures(tmp_path: Path, upstream: FakeTask, setup: dict[str, Any],
                                  model: str, fail_msg: str, fail_code: str) -> None:
    key = arrange(upstream, setup) or upstream.key
    task = await run_job(task_config(tmp_path, upstream.url, key),
                         {"model": model, "prompt": "a cat"})
    assert (task["state"], task["failMsg"], task["failCode"]) == \
        ("failed", fail_msg, fail_code)
    assert upstream.counts["submit"] == 1


async def test_submit_500_then_ok(tmp_path: Path, upstream: FakeTask) -> None:
    upstream.fail("submit", 500, {"code": 500, "msg": "Internal Server Error", "data": None})
    task = await run_job(task_config(tmp_path, upstream.url, upstream.key),
                         {"model": "gemini-3-pro-image", "prompt": "a cat"})
    assert task["state"] == "completed", task
    assert upstream.counts["submit"] == 2
    assert len(upstream.tasks) == 1


async def test_429_on_a_poll_keeps_polling(tmp_path: Path, upstream: FakeTask) -> None:
    upstream.fail("poll", 429, {"code": 429, "msg": "Too Many Requests", "data": None},
                  times=2, headers={"Retry-After": "0"})
    task = await run_job(task_config(tmp_path, upstream.url, upstream.key),
                         {"model": "gemini-3-pro-image", "prompt": "a cat"})
    assert task["state"] == "completed", task
    assert upstream.counts["submit"] == 1
    assert upstream.counts["poll"] >= 4


async def test_deadline_fails_the_job_without_a_cancel_call(tmp_path: Path,
                                                            upstream: FakeTask) -> None:
    upstream.hold = True
    config = task_config(tmp_path, upstream.url, upstream.key, jobs={"deadline_seconds": 0.5})
    task = await run_job(config, {"model": "gemini-3-pro-image", "prompt": "a cat"})
    assert (task["state"], task["failCode"]) == ("failed", "deadline_exceeded")
    # The task API has no cancel: only submits and polls ever reached the upstream.
    assert set(upstream.counts) == {"submit", "poll"}


async def test_restart_mid_job_resumes_polling(tmp_path: Path, upstream: FakeTask) -> None:
    upstream.hold = True
    config = task_config(tmp_path, upstream.url, upstream.key)
    async with accepted_job(config, {"model": "gemini-3-pro-image", "prompt": "a cat"}) as (
            _, task_id, upstream_id):
        assert upstream.counts["submit"] == 1
    upstream.hold = False
    polls_before = upstream.counts["poll"]
    task = await job_end(config, task_id)
    assert task["state"] == "completed", task
    assert upstream.counts["submit"] == 1
    assert upstream.counts["poll"] > polls_before
    assert list(upstream.tasks) == [upstream_id]


# -- end to end against a second real muxproxy ----------------------------------------------


def second_muxproxy_config(tmp_path: Path) -> dict[str, Any]:
    return merge(base_config(tmp_path), {
        "providers": {"demo-failing": {"kind": "demo", "options": {"failure_rate": 1.0}}},
        "models": {"demo-failing": {"routes": [{"provider": "demo-failing",
                                                "model": "demo-image"}]}},
    })


async def test_another_muxproxy_as_upstream(tmp_path: Path) -> None:
    references = [base64.b64encode(png(20, 20)).decode(),
                  base64.b64encode(png(30, 30)).decode()]
    async with run_gateway(second_muxproxy_config(tmp_path / "upstream")) as inner:
        config = task_config(tmp_path / "front", inner.url, KEY_A, base64_list=True)
        async with run_gateway(config) as front:
            task_id = await front.submit({"model": "remote-demo", "prompt": "a red fox",
                                          "aspect_ratio": "16:9", "image_base64": references})
            task = await front.wait_terminal(task_id)
            assert task["state"] == "completed", task
            async with front.http.get(task["resultUrls"][0]) as resp:
                image = Image.open(io.BytesIO(await resp.read()))
            assert image.size == (1360, 768)
            inner_id = await upstream_id_of(front, task_id)
            inner_job = await inner.state.store.get_job(inner_id)
            assert inner_job is not None
            assert inner_job.request.aspect_ratio == "16:9"
            assert len(inner_job.request.images) == 2
            assert inner_job.upstream_id == f"demo-{inner_id}"   # polled there too

            sync_task = await front.wait_terminal(await front.submit(
                {"model": "remote-sync-demo", "prompt": "a blue fox"}))
            assert sync_task["state"] == "completed", sync_task

            failed = await front.wait_terminal(await front.submit(
                {"model": "remote-failing", "prompt": "a fox"}))
    assert failed["state"] == "failed"
    assert failed["failMsg"] == "apimodels: demo failure (configured failure_rate)"
    assert failed["failCode"] == "demo_failure"
