"""The Replicate adapter, against the fake API: directly, and end to end through the
native task API."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.providers.base import Finished, Handle, ImageLink, Running, Submitted, Unsupported
from muxproxy.providers.replicate import ReplicateProvider, build_input
from muxproxy.settings import SettingsError
from tests.fakes.replicate import VERSIONS, FakeReplicate
from tests.fakes.scripted import png
from tests.support.gateway import run_gateway
from tests.support.provider_calls import (
    accepted_job,
    arrange,
    call_for,
    gateway_config,
    handle_for,
    job_end,
    provider_for,
    run_job,
    served,
    upstream_id_of,
)

SCHNELL = "black-forest-labs/flux-schnell"
PRO = "black-forest-labs/flux-1.1-pro"
KONTEXT = "black-forest-labs/flux-kontext-pro"


@pytest.fixture
async def replicate(aiohttp_server: AiohttpServer) -> FakeReplicate:
    return await served(FakeReplicate(), aiohttp_server)


def adapter(fake: FakeReplicate, http: aiohttp.ClientSession,
            **options: Any) -> ReplicateProvider:
    return provider_for(ReplicateProvider, http, base_url=f"{fake.url}/v1", key=fake.key,
                        name="replicate", **options)


def replicate_config(tmp_path: Path, fake: FakeReplicate, *, key: str | None = None,
                     jobs: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return gateway_config(
        tmp_path, {"kind": "replicate", "base_url": f"{fake.url}/v1",
                   "api_key": key or fake.key, "timeout_seconds": 5, "options": options},
        {"flux-schnell": {"model": SCHNELL, "params": {"go_fast": True}},
         "flux-1.1-pro": PRO, "flux-kontext-pro": KONTEXT},
        name="replicate", **(jobs or {}))


# -- the input dialects --------------------------------------------------------------


def test_input_dialects() -> None:
    assert build_input(GenerationRequest(prompt="p", n=3, output_format="jpeg",
                                         aspect_ratio="16:9"), SCHNELL) == {
        "prompt": "p", "num_outputs": 3, "aspect_ratio": "16:9", "output_format": "jpg"}
    assert build_input(GenerationRequest(prompt="p", size=(1024, 768)), PRO) == {
        "prompt": "p", "aspect_ratio": "custom", "width": 1024, "height": 768}
    assert build_input(GenerationRequest(prompt="p", size=(2048, 1152)), PRO) == {
        "prompt": "p", "aspect_ratio": "16:9"}
    assert build_input(GenerationRequest(prompt="p", size=(1024, 768)), KONTEXT) == {
        "prompt": "p", "aspect_ratio": "4:3"}


@pytest.mark.parametrize(("model", "request_kw", "param"), [
    (PRO, {"n": 2}, "n"),
    (SCHNELL, {"n": 5}, "n"),
    (SCHNELL, {"images": (ImageRef(url="https://x/a.png"),)}, "image_urls"),
    (KONTEXT, {"images": (ImageRef(url="https://x/a.png"), ImageRef(url="https://x/b.png"))},
     "image_urls"),
    (SCHNELL, {"resolution": "2k"}, "resolution"),
])
def test_what_a_model_cannot_take(model: str, request_kw: dict[str, Any], param: str) -> None:
    with pytest.raises(Unsupported) as caught:
        build_input(GenerationRequest(prompt="p", **request_kw), model)
    assert caught.value.param == param


async def test_wait_seconds_is_checked(replicate: FakeReplicate,
                                       http: aiohttp.ClientSession) -> None:
    with pytest.raises(SettingsError, match="wait_seconds"):
        adapter(replicate, http, wait_seconds=61)


# -- the adapter against the fake API ----------------------------------------------------


@pytest.mark.parametrize(("model", "n"), [(SCHNELL, 2), (PRO, 1)])
async def test_output_list_or_string(replicate: FakeReplicate, http: aiohttp.ClientSession,
                                     model: str, n: int) -> None:
    provider = adapter(replicate, http)
    submitted = await provider.submit(call_for(GenerationRequest(prompt="fox", n=n), model))
    assert isinstance(submitted, Submitted)
    prediction = replicate.predictions[submitted.upstream_id]
    assert submitted.state == {"get": prediction["urls"]["get"],
                               "cancel": prediction["urls"]["cancel"]}
    handle = handle_for(submitted, model)
    assert await provider.poll(handle) == Running()
    finished = await provider.poll(handle)
    assert isinstance(finished, Finished)
    assert isinstance(prediction["output"], list if model == SCHNELL else str)
    assert len(finished.images) == n
    assert all(isinstance(i, ImageLink) and i.url.startswith(f"{replicate.url}/files/")
               for i in finished.images)


async def test_version_pinned_model(replicate: FakeReplicate,
                                    http: aiohttp.ClientSession) -> None:
    [(version, model)] = VERSIONS.items()
    provider = adapter(replicate, http)
    submitted = await provider.submit(call_for(GenerationRequest(prompt="p"),
                                               f"{model}:{version}"))
    assert isinstance(submitted, Submitted)
    assert replicate.predictions[submitted.upstream_id]["version"] == version
    # Without stored URLs the adapter falls back to /predictions/{id}.
    handle = Handle(job_id="job-1", upstream_id=submitted.upstream_id,
                    upstream_model=f"{model}:{version}", state={})
    assert await provider.poll(handle) == Running()
    await provider.cancel(handle)
    assert replicate.predictions[submitted.upstream_id]["status"] == "canceled"


# -- end to end through the native task API ----------------------------------------


async def test_list_output_completes(tmp_path: Path, replicate: FakeReplicate) -> None:
    async with run_gateway(replicate_config(tmp_path, replicate)) as gateway:
        task_id = await gateway.submit({"model": "flux-schnell", "prompt": "a fox", "n": 2,
                                        "output_format": "jpeg", "aspect_ratio": "3:2"})
        task = await gateway.wait_terminal(task_id)
        assert task["state"] == "completed", task
        assert len(task["resultUrls"]) == 2
        prediction_id = await upstream_id_of(gateway, task_id)
    assert replicate.predictions[prediction_id]["input"] == {
        "prompt": "a fox", "num_outputs": 2, "aspect_ratio": "3:2", "output_format": "jpg",
        "go_fast": True}
    assert replicate.prefer_headers == [None]


async def test_string_output_with_reference(tmp_path: Path, replicate: FakeReplicate) -> None:
    image = png(16, 16)
    encoded = base64.b64encode(image).decode()
    task = await run_job(replicate_config(tmp_path, replicate),
                         {"model": "flux-kontext-pro", "prompt": "make it blue",
                          "image_base64": encoded})
    assert task["state"] == "completed", task
    assert len(task["resultUrls"]) == 1
    [prediction] = replicate.predictions.values()
    assert prediction["input"]["input_image"] == f"data:image/png;base64,{encoded}"
    assert isinstance(prediction["output"], str)


async def test_prefer_wait_finishes_without_polling(tmp_path: Path,
                                                    replicate: FakeReplicate) -> None:
    async with run_gateway(replicate_config(tmp_path, replicate, wait_seconds=5)) as gateway:
        task_id = await gateway.submit({"model": "flux-1.1-pro", "prompt": "a fox",
                                        "size": "1024x768"})
        task = await gateway.wait_terminal(task_id)
        job = await gateway.state.store.get_job(task_id)
    assert task["state"] == "completed", task
    assert job is not None and job.upstream_id is None
    assert replicate.prefer_headers == ["wait=5"]
    assert (replicate.counts["create"], replicate.counts["get"]) == (1, 0)


async def test_prefer_wait_that_runs_out_falls_back_to_polling(
        tmp_path: Path, replicate: FakeReplicate) -> None:
    replicate.wait_finishes = False
    task = await run_job(replicate_config(tmp_path, replicate, wait_seconds=1),
                         {"model": "flux-schnell", "prompt": "a fox"})
    assert task["state"] == "completed", task
    assert replicate.counts["create"] == 1 and replicate.counts["get"] >= 2


@pytest.mark.parametrize(("setup", "body", "fail_msg", "fail_code"), [
    ({"key": "r8_wrong"}, {}, "replicate: You did not pass a valid authentication token",
     "upstream_error"),
    ({}, {"aspect_ratio": "7:3"}, "replicate: - input.aspect_ratio: aspect_ratio must be one",
     "upstream_error"),
    ({"fail_with": "NSFW content detected. Try running it again, or try a different prompt."},
     {}, "replicate: NSFW content detected. Try running it again", "prediction_failed"),
    ({"end_canceled": True}, {}, "replicate: prediction was canceled", "prediction_canceled"),
], ids=["bad-key", "422", "failed-200", "canceled"])
async def test_permanent_failures(tmp_path: Path, replicate: FakeReplicate,
                                  setup: dict[str, Any], body: dict[str, Any], fail_msg: str,
                                  fail_code: str) -> None:
    key = arrange(replicate, setup)
    task = await run_job(replicate_config(tmp_path, replicate, key=key),
                         {"model": "flux-schnell", "prompt": "a fox", **body})
    assert task["state"] == "failed"
    assert task["failMsg"].startswith(fail_msg), task
    assert task["failCode"] == fail_code
    assert replicate.counts["create"] == 1


async def test_failed_inside_prefer_wait(tmp_path: Path, replicate: FakeReplicate) -> None:
    replicate.fail_with = "CUDA out of memory"
    task = await run_job(replicate_config(tmp_path, replicate, wait_seconds=10),
                         {"model": "flux-schnell", "prompt": "a fox"})
    assert (task["state"], task["failMsg"]) == ("failed", "replicate: CUDA out of memory")
    assert replicate.counts["get"] == 0


async def test_throttled_create_is_retried(tmp_path: Path, replicate: FakeReplicate) -> None:
    replicate.fail("create", 429, {"title": "Request was throttled.", "status": 429,
                                   "detail": "Request was throttled. Expected available in "
                                             "0 seconds."}, headers={"Retry-After": "0"})
    task = await run_job(replicate_config(tmp_path, replicate),
                         {"model": "flux-schnell", "prompt": "a fox"})
    assert task["state"] == "completed", task
    assert replicate.counts["create"] == 2
    assert len(replicate.predictions) == 1


async def test_errors_on_polls_keep_polling(tmp_path: Path, replicate: FakeReplicate) -> None:
    replicate.fail("get", 503, {"title": "Service Unavailable", "status": 503,
                                "detail": "try again"})
    replicate.fail("get", 429, {"title": "Request was throttled.", "status": 429,
                                "detail": "slow down"}, headers={"Retry-After": "0"})
    task = await run_job(replicate_config(tmp_path, replicate),
                         {"model": "flux-schnell", "prompt": "a fox"})
    assert task["state"] == "completed", task
    assert replicate.counts["create"] == 1
    assert replicate.counts["get"] >= 4


async def test_deadline_cancels_upstream(tmp_path: Path, replicate: FakeReplicate) -> None:
    replicate.hold = True
    config = replicate_config(tmp_path, replicate, jobs={"deadline_seconds": 0.5})
    task = await run_job(config, {"model": "flux-schnell", "prompt": "a fox"},
                         until=lambda: replicate.counts["cancel"] == 1)
    assert (task["state"], task["failCode"]) == ("failed", "deadline_exceeded")
    [prediction] = replicate.predictions.values()
    assert prediction["status"] == "canceled"


async def test_restart_mid_job_resumes_polling(tmp_path: Path,
                                               replicate: FakeReplicate) -> None:
    replicate.hold = True
    config = replicate_config(tmp_path, replicate)
    async with accepted_job(config, {"model": "flux-1.1-pro", "prompt": "a fox"}) as (
            _, task_id, prediction_id):
        assert replicate.counts["create"] == 1
    replicate.hold = False
    polls_before = replicate.counts["get"]
    task = await job_end(config, task_id)
    assert task["state"] == "completed", task
    assert replicate.counts["create"] == 1
    assert replicate.counts["get"] > polls_before
    assert replicate.counts["cancel"] == 0
    assert replicate.predictions[prediction_id]["status"] == "succeeded"
