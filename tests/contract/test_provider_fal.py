"""The fal.ai queue adapter, against the fake queue: directly, and end to end through
the native task API."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.providers.base import (
    Finished,
    ImageLink,
    Reference,
    Running,
    Unsupported,
    UpstreamError,
)
from muxproxy.providers.fal import FalProvider, plan
from tests.fakes.fal import FakeFal
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
    submit,
    upstream_id_of,
)


@pytest.fixture
async def fal(aiohttp_server: AiohttpServer) -> FakeFal:
    return await served(FakeFal(), aiohttp_server)


def adapter(fake: FakeFal, http: aiohttp.ClientSession) -> FalProvider:
    return provider_for(FalProvider, http, base_url=fake.url, key=fake.key, name="fal")


def fal_config(tmp_path: Path, fake: FakeFal, *, key: str | None = None,
               jobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return gateway_config(
        tmp_path, {"kind": "fal", "base_url": fake.url, "api_key": key or fake.key,
                   "timeout_seconds": 5},
        {"nano-banana": "fal-ai/nano-banana", "nano-banana-pro": "fal-ai/nano-banana-pro",
         "nano-banana-edit": "fal-ai/nano-banana/edit",
         "flux-dev": {"model": "fal-ai/flux/dev",
                      "params": {"seed": 7, "enable_safety_checker": True}}},
        name="fal", **(jobs or {}))


# -- the input dialects --------------------------------------------------------------


def test_flux_dialect_sizes() -> None:
    def size(**kw: Any) -> Any:
        return plan(GenerationRequest(prompt="p", **kw), "fal-ai/flux/dev").body.get("image_size")

    assert size() is None
    assert size(aspect_ratio="16:9") == "landscape_16_9"
    assert size(aspect_ratio="9:16", resolution="1k") == "portrait_16_9"
    assert size(aspect_ratio="16:9", resolution="2k") == {"width": 2736, "height": 1536}
    assert size(aspect_ratio="21:9") == {"width": 1568, "height": 672}
    assert size(size=(1280, 720)) == {"width": 1280, "height": 720}
    body = plan(GenerationRequest(prompt="p", n=2, output_format="png",
                                  extra={"seed": 3}), "fal-ai/flux/dev").body
    assert body == {"prompt": "p", "num_images": 2, "output_format": "png", "seed": 3}


def test_banana_dialect_and_edit_switch() -> None:
    with_image = GenerationRequest(prompt="p", images=(ImageRef(url="https://x/a.png"),))
    target = plan(with_image, "fal-ai/nano-banana")
    assert (target.app.id, target.image_field) == ("fal-ai/nano-banana/edit", "image_urls")
    assert plan(with_image, "fal-ai/nano-banana-pro/edit").app.id == \
        "fal-ai/nano-banana-pro/edit"
    pro = plan(GenerationRequest(prompt="p", aspect_ratio="16:9", resolution="4k"),
               "fal-ai/nano-banana-pro").body
    assert pro == {"prompt": "p", "num_images": 1, "aspect_ratio": "16:9", "resolution": "4K"}
    from_size = plan(GenerationRequest(prompt="p", size=(2048, 1152)), "fal-ai/nano-banana-2")
    assert from_size.body["aspect_ratio"] == "16:9"
    assert from_size.body["resolution"] == "2K"
    assert "resolution" not in plan(GenerationRequest(prompt="p", size=(1024, 1024)),
                                    "fal-ai/nano-banana").body


@pytest.mark.parametrize(("model", "request_kw", "param"), [
    ("fal-ai/nano-banana", {"resolution": "2k"}, "resolution"),
    ("fal-ai/nano-banana/edit", {}, "image_urls"),
    ("fal-ai/flux/dev", {"images": (ImageRef(url="https://x/a.png"),)}, "image_urls"),
    ("fal-ai/nano-banana", {"images": (ImageRef(url="https://x/a.png"),),
                            "mask": ImageRef(url="https://x/m.png")}, "mask"),
])
def test_what_an_app_cannot_take(model: str, request_kw: dict[str, Any], param: str) -> None:
    with pytest.raises(Unsupported) as caught:
        plan(GenerationRequest(prompt="p", **request_kw), model)
    assert caught.value.param == param


# -- the adapter against the fake queue ------------------------------------------------


async def test_sub_path_app_polls_the_returned_urls(fal: FakeFal,
                                                    http: aiohttp.ClientSession) -> None:
    provider = adapter(fal, http)
    model = "fal-ai/flux/dev"
    submitted = await submit(provider, call_for(GenerationRequest(prompt="fox", n=2), model,
                                                params={"seed": 7}))
    assert submitted.state["status_url"] == \
        f"{fal.url}/fal-ai/flux/requests/{submitted.upstream_id}/status"
    assert fal.requests[submitted.upstream_id].input == {"prompt": "fox", "num_images": 2,
                                                         "seed": 7}
    handle = handle_for(submitted, model)
    assert await provider.poll(handle) == Running()   # 202 IN_QUEUE
    assert await provider.poll(handle) == Running()   # IN_PROGRESS
    finished = await provider.poll(handle)
    assert isinstance(finished, Finished)
    assert [type(i) for i in finished.images] == [ImageLink, ImageLink]
    assert all(isinstance(i, ImageLink) and i.url.startswith(f"{fal.url}/files/")
               for i in finished.images)
    assert (fal.counts["submit"], fal.counts["status"], fal.counts["result"]) == (1, 3, 1)
    # The sub-path status URL a client might build does not exist upstream.
    async with http.get(f"{fal.url}/fal-ai/flux/dev/requests/{submitted.upstream_id}/status",
                        headers=provider.auth_headers()) as resp:
        assert resp.status in (404, 405)


async def test_byte_references_go_as_data_uris(fal: FakeFal,
                                               http: aiohttp.ClientSession) -> None:
    provider = adapter(fal, http)
    image = png(8, 8)
    request = GenerationRequest(prompt="make it blue", images=(
        ImageRef(url="https://cdn.example/a.png"), ImageRef(blob="inputs/x/image0.png")))
    refs = (Reference(url="https://cdn.example/a.png", data=None, content_type=None),
            Reference(url=None, data=image, content_type="image/png"))
    submitted = await submit(provider, call_for(request, "fal-ai/nano-banana", refs))
    sent = fal.requests[submitted.upstream_id]
    assert sent.app == "fal-ai/nano-banana/edit"
    assert sent.input["image_urls"] == [
        "https://cdn.example/a.png", "data:image/png;base64," + base64.b64encode(image).decode()]


async def test_flagged_images_are_dropped(fal: FakeFal, http: aiohttp.ClientSession) -> None:
    fal.nsfw = True
    fal.queued_polls = fal.running_polls = 0
    provider = adapter(fal, http)
    submitted = await submit(provider, call_for(GenerationRequest(prompt="p"),
                                                "fal-ai/flux/dev"))
    with pytest.raises(UpstreamError) as caught:
        await provider.poll(handle_for(submitted, "fal-ai/flux/dev"))
    assert (caught.value.code, caught.value.transient) == ("content_filtered", False)


async def test_cancel_puts_the_cancel_url(fal: FakeFal, http: aiohttp.ClientSession) -> None:
    provider = adapter(fal, http)
    submitted = await submit(provider, call_for(GenerationRequest(prompt="p"),
                                                "fal-ai/flux/dev"))
    await provider.cancel(handle_for(submitted, "fal-ai/flux/dev"))
    assert fal.requests[submitted.upstream_id].canceled
    assert fal.counts["cancel"] == 1


# -- end to end through the native task API ----------------------------------------


async def test_completes_through_the_gateway(tmp_path: Path, fal: FakeFal) -> None:
    async with run_gateway(fal_config(tmp_path, fal)) as gateway:
        task_id = await gateway.submit({"model": "nano-banana-pro", "prompt": "a red fox",
                                        "aspect_ratio": "16:9", "resolution": "2k", "n": 2})
        task = await gateway.wait_terminal(task_id)
        assert task["state"] == "completed", task
        assert len(task["resultUrls"]) == 2
        async with gateway.http.get(task["resultUrls"][1]) as resp:
            assert resp.status == 200
            assert await resp.read() == fal.files[f"{await upstream_id_of(gateway, task_id)}-1.png"]
    [sent] = fal.requests.values()
    assert sent.input == {"prompt": "a red fox", "num_images": 2, "aspect_ratio": "16:9",
                          "resolution": "2K"}
    assert fal.counts["submit"] == 1


async def test_data_uri_results_are_stored(tmp_path: Path, fal: FakeFal) -> None:
    fal.data_uris = True
    task = await run_job(fal_config(tmp_path, fal), {"model": "flux-dev", "prompt": "a fox"})
    assert task["state"] == "completed", task
    [sent] = fal.requests.values()
    assert sent.input["seed"] == 7 and sent.input["enable_safety_checker"] is True


async def test_uploaded_references_count_at_submit(tmp_path: Path, fal: FakeFal) -> None:
    encoded = base64.b64encode(png(12, 12)).decode()
    async with run_gateway(fal_config(tmp_path, fal)) as gateway:
        task = await gateway.wait_terminal(await gateway.submit(
            {"model": "nano-banana-edit", "prompt": "make it blue", "image_base64": encoded}))
        assert task["state"] == "completed", task
        async with gateway.http.post(
                f"{gateway.url}/api/v1/images/generations", headers=gateway.headers(),
                json={"model": "flux-dev", "prompt": "p", "image_base64": encoded}) as resp:
            assert resp.status == 400
            assert await resp.json() == {
                "code": 400, "data": None,
                "msg": "fal app fal-ai/flux/dev does not take reference images"}
    [sent] = fal.requests.values()
    assert sent.input["image_urls"] == [f"data:image/png;base64,{encoded}"]


@pytest.mark.parametrize(("setup", "body", "fail_msg", "fail_code"), [
    ({"key": "wrong"}, {}, "fal: No user found for Key ID and Secret", "upstream_error"),
    ({}, {"aspect_ratio": "7:3"}, "fal: aspect_ratio: unexpected value; permitted:",
     "upstream_error"),
    ({"error": "Image generation failed: safety"}, {}, "fal: Image generation failed: safety",
     "generation_error"),
    ({"result_error": (422, {"detail": [{"loc": ["body", "image_urls", 0], "msg":
                                         "Could not download the file", "type": "file"}]})},
     {}, "fal: image_urls.0: Could not download the file", "upstream_error"),
], ids=["bad-key", "422-at-submit", "completed-with-error", "422-at-result"])
async def test_permanent_failures(tmp_path: Path, fal: FakeFal, setup: dict[str, Any],
                                  body: dict[str, Any], fail_msg: str, fail_code: str) -> None:
    key = arrange(fal, setup)
    task = await run_job(fal_config(tmp_path, fal, key=key),
                         {"model": "nano-banana", "prompt": "a fox", **body})
    assert task["state"] == "failed"
    assert task["failMsg"].startswith(fail_msg), task
    assert task["failCode"] == fail_code
    assert fal.counts["submit"] == 1


async def test_submit_500_is_retried(tmp_path: Path, fal: FakeFal) -> None:
    fal.fail("submit", 500, {"detail": "Internal Server Error"})
    task = await run_job(fal_config(tmp_path, fal), {"model": "nano-banana", "prompt": "a fox"})
    assert task["state"] == "completed", task
    assert fal.counts["submit"] == 2
    assert len(fal.requests) == 1


async def test_429_on_a_poll_keeps_polling(tmp_path: Path, fal: FakeFal) -> None:
    fal.fail("status", 429, {"detail": "Too many requests"}, times=2,
             headers={"Retry-After": "0"})
    task = await run_job(fal_config(tmp_path, fal), {"model": "nano-banana", "prompt": "a fox"})
    assert task["state"] == "completed", task
    assert fal.counts["submit"] == 1
    assert fal.counts["status"] >= 5     # two 429s, 202 queued, in progress, completed


async def test_deadline_cancels_upstream(tmp_path: Path, fal: FakeFal) -> None:
    fal.hold = True
    config = fal_config(tmp_path, fal, jobs={"deadline_seconds": 0.5})
    task = await run_job(config, {"model": "nano-banana", "prompt": "a fox"},
                         until=lambda: fal.counts["cancel"] == 1)
    assert (task["state"], task["failCode"]) == ("failed", "deadline_exceeded")
    [request] = fal.requests.values()
    assert request.canceled


async def test_restart_mid_job_resumes_polling(tmp_path: Path, fal: FakeFal) -> None:
    fal.hold = True
    config = fal_config(tmp_path, fal)
    async with accepted_job(config, {"model": "flux-dev", "prompt": "a fox"}) as (
            gateway, task_id, request_id):
        assert fal.counts["submit"] == 1
        assert (await gateway.task(task_id))["state"] == "processing"
    fal.hold = False
    polls_before = fal.counts["status"]
    task = await job_end(config, task_id)
    assert task["state"] == "completed", task
    assert fal.counts["submit"] == 1
    assert fal.counts["status"] > polls_before
    assert fal.counts["cancel"] == 0
    assert list(fal.requests) == [request_id]
