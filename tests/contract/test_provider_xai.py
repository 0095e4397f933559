"""The xAI adapter against its fake, then end to end."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from muxproxy.generation import GenerationRequest
from muxproxy.providers import provider_class
from muxproxy.providers.base import (
    Finished,
    ImageData,
    ImageLink,
    Reference,
    Unsupported,
    UpstreamError,
)
from muxproxy.providers.xai import XAIProvider
from tests.fakes.openai import make_image
from tests.fakes.xai import FakeXAI
from tests.support.gateway import run_gateway
from tests.support.provider_calls import (
    b64,
    data_ref,
    gateway_config,
    make_call,
    make_provider,
    run_job,
    serve,
)

GENERATIONS, EDITS = "/v1/images/generations", "/v1/images/edits"
MODEL = "grok-imagine-image"
PNG = make_image((90, 10, 10))


@pytest.fixture
async def fake(aiohttp_server: AiohttpServer) -> FakeXAI:
    return await serve(FakeXAI(), aiohttp_server)


@pytest.fixture
def xai(fake: FakeXAI, http: aiohttp.ClientSession) -> XAIProvider:
    return make_provider(XAIProvider, fake, http)


def test_kind_is_registered() -> None:
    assert provider_class("xai") is XAIProvider


# --- request translation -------------------------------------------------------------

async def test_generation_url_result(xai: XAIProvider, fake: FakeXAI,
                                     http: aiohttp.ClientSession) -> None:
    outcome = await xai.submit(make_call(MODEL, n=2, aspect_ratio="16:9", resolution="2k",
                                         quality="medium"))
    assert isinstance(outcome, Finished)
    assert outcome.revised_prompt == "revised: a lighthouse at dusk"
    assert len(outcome.images) == 2
    for link in outcome.images:
        assert isinstance(link, ImageLink)
        async with http.get(link.url) as resp:
            assert await resp.read() == fake.image
    [call] = fake.calls(GENERATIONS)
    assert call.headers["Authorization"] == f"Bearer {fake.key}"
    assert call.json == {"model": MODEL, "prompt": "a lighthouse at dusk", "n": 2,
                         "aspect_ratio": "16:9", "resolution": "2k", "quality": "medium"}


async def test_b64_result(xai: XAIProvider, fake: FakeXAI) -> None:
    outcome = await xai.submit(make_call("grok-imagine-image-pro",
                                         params={"response_format": "b64_json"}))
    assert outcome == Finished(images=(ImageData(fake.image, "image/jpeg"),),
                               revised_prompt="revised: a lighthouse at dusk")


@pytest.mark.parametrize(("fields", "sent"), [
    ({"size": (1024, 1024)}, {"aspect_ratio": "1:1", "resolution": "1k"}),
    ({"size": (1792, 1024)}, {"aspect_ratio": "16:9", "resolution": "2k"}),
    ({"size": (1024, 1536)}, {"aspect_ratio": "2:3", "resolution": "1k"}),
    ({"size": (768, 1664)}, {"aspect_ratio": "9:19.5", "resolution": "1k"}),
    ({"size": (4096, 2048)}, {"aspect_ratio": "2:1", "resolution": "2k"}),
    ({"aspect_ratio": "auto", "quality": "standard"}, {"aspect_ratio": "auto",
                                                       "quality": "low"}),
    ({"quality": "auto"}, {}),
])
async def test_size_becomes_aspect_ratio(xai: XAIProvider, fake: FakeXAI,
                                         fields: dict[str, Any], sent: dict[str, Any]) -> None:
    await xai.submit(make_call(MODEL, **fields))
    [call] = fake.calls(GENERATIONS)
    assert call.json == {"model": MODEL, "prompt": "a lighthouse at dusk", "n": 1, **sent}


@pytest.mark.parametrize(("fields", "param"), [
    ({"resolution": "4k"}, "resolution"),
    ({"aspect_ratio": "5:4"}, "aspect_ratio"),
    ({"quality": "high"}, "quality"),
    ({"quality": "hd"}, "quality"),
    ({"extra": {"style": "vivid"}}, "style"),
    ({"extra": {"background": "transparent"}}, "background"),
    ({"extra": {"response_format": "png"}}, "response_format"),
    ({"mask": data_ref(PNG)}, "mask"),
])
def test_check_refuses(xai: XAIProvider, fields: dict[str, Any], param: str) -> None:
    request = make_call(MODEL, **fields).request
    with pytest.raises(Unsupported) as info:
        xai.check(request, MODEL, {})
    assert info.value.param == param


def test_style_in_route_params_is_refused(xai: XAIProvider) -> None:
    with pytest.raises(Unsupported, match="style"):
        xai.check(GenerationRequest(prompt="p"), MODEL, {"style": "vivid"})


# --- edits (JSON) --------------------------------------------------------------------

async def test_edit_with_one_inline_image(xai: XAIProvider, fake: FakeXAI) -> None:
    await xai.submit(make_call(MODEL, refs=(data_ref(PNG),),
                               params={"response_format": "b64_json"}))
    [call] = fake.calls(EDITS)
    assert call.headers["Content-Type"] == "application/json"
    assert call.json == {"model": MODEL, "prompt": "a lighthouse at dusk", "n": 1,
                         "response_format": "b64_json",
                         "image": {"url": f"data:image/png;base64,{b64(PNG)}",
                                   "type": "image_url"}}


async def test_edit_with_several_images_and_mask(xai: XAIProvider, fake: FakeXAI) -> None:
    mask = make_image((255, 255, 255))
    # References arrive fetched already (the runner downloads them, guarded). An
    # https one goes as its URL; any other is sent inline.
    https_ref = Reference(url="https://images.example/cat.png", data=PNG,
                          content_type="image/png")
    http_ref = Reference(url="http://images.example/dog.jpeg", data=fake.image,
                         content_type="image/jpeg")
    await xai.submit(make_call(MODEL, refs=(https_ref, http_ref), mask=data_ref(mask)))
    [call] = fake.calls(EDITS)
    assert call.json["images"] == [
        {"url": "https://images.example/cat.png", "type": "image_url"},
        {"url": f"data:image/jpeg;base64,{b64(fake.image)}", "type": "image_url"}]
    assert call.json["mask"] == {"url": f"data:image/png;base64,{b64(mask)}",
                                 "type": "image_url"}
    assert "image" not in call.json


async def test_fake_rejects_size_and_multipart(fake: FakeXAI,
                                               http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {fake.key}"}
    async with http.post(f"{fake.base_url}/images/generations", headers=headers,
                         json={"model": MODEL, "prompt": "p", "size": "1024x1024"}) as resp:
        assert resp.status == 400
        assert await resp.json() == {"code": "Client specified an invalid argument",
                                     "error": "Argument not supported: size"}
    form = aiohttp.FormData({"model": MODEL, "prompt": "p"})
    form.add_field("image", PNG, filename="a.png", content_type="image/png")
    async with http.post(f"{fake.base_url}/images/edits", headers=headers, data=form) as resp:
        assert resp.status == 415
    async with http.post(f"{fake.base_url}/images/edits", headers=headers,
                         json={"model": MODEL, "prompt": "p"}) as resp:
        assert resp.status == 400
        assert "image" in (await resp.json())["error"]


# --- errors --------------------------------------------------------------------------

async def fails(provider: XAIProvider, **fields: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await provider.submit(make_call(fields.pop("model", MODEL), **fields))
    return info.value


async def test_bad_key_is_a_permanent_400(fake: FakeXAI, http: aiohttp.ClientSession) -> None:
    error = await fails(make_provider(XAIProvider, fake, http, key="xai-wrong-key-99"))
    assert (error.transient, error.status) == (False, 400)
    assert error.message == ("upstream: Incorrect API key provided: xa***99. You can obtain "
                             "an API key from https://console.x.ai.")


async def test_moderation_in_the_error_object_shape(xai: XAIProvider) -> None:
    error = await fails(xai, prompt="a forbidden scene")
    assert (error.transient, error.status) == (False, 400)
    assert error.message == "upstream: Generated image rejected by content moderation."


async def test_unknown_model(xai: XAIProvider) -> None:
    error = await fails(xai, model="grok-9-image")
    assert (error.transient, error.status) == (False, 404)
    assert "does not exist" in error.message


@pytest.mark.parametrize(("status", "transient"), [(429, True), (500, True), (503, True),
                                                   (403, False), (422, False)])
async def test_status_classification(xai: XAIProvider, fake: FakeXAI, status: int,
                                     transient: bool) -> None:
    fake.fail(status, headers={"Retry-After": "3"})
    error = await fails(xai)
    assert (error.status, error.transient, error.retry_after) == (status, transient, 3.0)
    assert error.message != f"upstream: HTTP {status}"


async def test_invalid_base64_result(xai: XAIProvider, fake: FakeXAI) -> None:
    fake.fail(200, body={"data": [{"b64_json": base64.b64encode(b"x").decode() + "!"}]})
    error = await fails(xai)
    assert (error.transient, error.code) == (False, "upstream_error")


# --- end to end through the native task API ------------------------------------------

def _config(tmp_path: Path, fake: FakeXAI, *, key: str | None = None,
            **jobs: Any) -> dict[str, Any]:
    return gateway_config(
        tmp_path, {"kind": "xai", "base_url": fake.base_url, "api_key": key or fake.key,
                   "timeout_seconds": 10},
        {"grok-imagine/grok-imagine-image": MODEL}, **jobs)


async def test_e2e_success(tmp_path: Path, fake: FakeXAI) -> None:
    async with run_gateway(_config(tmp_path, fake)) as gw:
        task = await gw.wait_terminal(await gw.submit(
            {"model": "grok-imagine/grok-imagine-image", "prompt": "a cat in a helmet",
             "size": "1024x1024"}))
        assert task["state"] == "completed", task
        [url] = task["resultUrls"]
        async with gw.http.get(url) as resp:
            assert resp.headers["content-type"] == "image/jpeg"
            assert await resp.read() == fake.image
    [call] = fake.calls(GENERATIONS)
    assert call.json["aspect_ratio"] == "1:1" and "size" not in call.json
    assert fake.downloads == 1


async def test_e2e_mask_inpainting(tmp_path: Path, fake: FakeXAI) -> None:
    mask = make_image((255, 255, 255))
    task = await run_job(_config(tmp_path, fake),
                         {"model": "grok-imagine/grok-imagine-image",
                          "prompt": "a golden retriever", "image": b64(PNG),
                          "mask": b64(mask), "size": "1024x1024"})
    assert task["state"] == "completed", task
    [call] = fake.calls(EDITS)
    assert call.json["image"]["url"] == f"data:image/png;base64,{b64(PNG)}"
    assert call.json["mask"]["url"] == f"data:image/png;base64,{b64(mask)}"


async def test_e2e_permanent_failure(tmp_path: Path, fake: FakeXAI) -> None:
    task = await run_job(_config(tmp_path, fake, key="xai-wrong-key-99"),
                         {"model": "grok-imagine/grok-imagine-image", "prompt": "a cat"})
    assert task["state"] == "failed"
    assert "Incorrect API key provided" in task["failMsg"]
    assert len(fake.calls(GENERATIONS)) == 1


async def test_e2e_transient_then_success(tmp_path: Path, fake: FakeXAI) -> None:
    fake.fail(500)
    fake.fail(429, headers={"Retry-After": "1"})
    task = await run_job(_config(tmp_path, fake),
                         {"model": "grok-imagine/grok-imagine-image", "prompt": "a cat"})
    assert task["state"] == "completed", task
    assert len(fake.calls(GENERATIONS)) == 3


async def test_e2e_deadline(tmp_path: Path, fake: FakeXAI) -> None:
    fake.hang = True
    async with run_gateway(_config(tmp_path, fake, deadline_seconds=0.5)) as gw:
        started = time.monotonic()
        task = await gw.wait_terminal(await gw.submit(
            {"model": "grok-imagine/grok-imagine-image", "prompt": "slow"}), timeout=5)
        assert time.monotonic() - started < 3
    assert (task["state"], task["failCode"]) == ("failed", "deadline_exceeded")
    assert "deadline" in task["failMsg"]
