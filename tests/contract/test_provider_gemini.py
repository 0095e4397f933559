"""The Gemini adapter against a fake generateContent API: translation, results,
blocks, error classification, refusals, and whole jobs through the task API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.providers.base import Call, Finished, ImageData, Reference, Unsupported, UpstreamError
from muxproxy.providers.gemini import GeminiProvider, image_size_for, limits_for
from muxproxy.providers.sizes import nearest_ratio as nearest_aspect_ratio
from tests.fakes.gemini import FakeGemini, running
from tests.fakes.images import solid
from tests.support.gateway import run_gateway
from tests.support.provider_calls import (
    b64,
    call_for,
    gateway_config,
    provider_for,
    run_job,
    submit_error,
)

FLASH = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image-preview"
FLASH2 = "gemini-3.1-flash-image-preview"



@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with running(FakeGemini()) as served:
        yield served


def provider(fake: FakeGemini, http: aiohttp.ClientSession, key: str | None = None
             ) -> GeminiProvider:
    return provider_for(GeminiProvider, http, base_url=fake.url,
                        key=fake.api_key if key is None else key, name="gemini")


def call(request: GenerationRequest, model: str = FLASH,
         images: tuple[Reference, ...] = (), params: dict[str, Any] | None = None) -> Call:
    return call_for(request, model, images, params)


async def test_request_carries_prompt_references_and_image_config(
        fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    uploaded, hosted = solid((1, 2, 3)), solid((4, 5, 6), "JPEG")
    # A URL reference arrives fetched already (the runner downloads it, guarded).
    refs = (Reference(url=None, data=uploaded, content_type="image/png"),
            Reference(url="https://cdn.example/ref.jpeg", data=hosted,
                      content_type="image/jpeg"))
    request = GenerationRequest(prompt="a fox in snow", aspect_ratio="16:9",
                                resolution="2k",
                                images=(ImageRef(blob="in/0.png"), ImageRef(url="x")))
    outcome = await provider(fake, http).submit(call(request, PRO, refs))

    assert fake.bodies == [{
        "contents": [{"role": "user", "parts": [
            {"text": "a fox in snow"},
            {"inlineData": {"mimeType": "image/png", "data": b64(uploaded)}},
            {"inlineData": {"mimeType": "image/jpeg", "data": b64(hosted)}}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"],
                             "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}}}]
    # gemini-3-pro sends a thought image first: the final one is the result.
    assert outcome == Finished(images=(ImageData(fake.final_image, "image/png"),),
                               revised_prompt="Here is the finished image.")


async def test_route_params_extend_generation_config(fake: FakeGemini,
                                                     http: aiohttp.ClientSession) -> None:
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    await provider(fake, http).submit(call(
        GenerationRequest(prompt="p"), params={"generationConfig": {"temperature": 0.4},
                                               "safetySettings": safety}))
    [body] = fake.bodies
    assert body["generationConfig"] == {"responseModalities": ["TEXT", "IMAGE"],
                                        "temperature": 0.4}
    assert body["safetySettings"] == safety


@pytest.mark.parametrize(("size", "ratio"), [
    ((1024, 1024), "1:1"), ((1536, 1024), "3:2"), ((1024, 1536), "2:3"),
    ((1360, 768), "16:9"), ((768, 1360), "9:16"), ((2560, 1080), "21:9"),
    ((1100, 880), "5:4"), ((1024, 768), "4:3"),
])
def test_size_maps_to_nearest_aspect_ratio(size: tuple[int, int], ratio: str) -> None:
    assert nearest_aspect_ratio(*size, limits_for(PRO).aspect_ratios) == ratio


@pytest.mark.parametrize(("model", "request_", "expected"), [
    (PRO, GenerationRequest(prompt="p", size=(1536, 1024)), "1K"),
    (PRO, GenerationRequest(prompt="p", size=(2048, 2048)), "2K"),
    (PRO, GenerationRequest(prompt="p", size=(4096, 4096)), "4K"),
    (PRO, GenerationRequest(prompt="p", resolution="4k"), "4K"),
    (PRO, GenerationRequest(prompt="p"), None),
    (FLASH, GenerationRequest(prompt="p", size=(2048, 2048)), None),  # 1K-only: never sent
    (FLASH, GenerationRequest(prompt="p", resolution="1k"), None),
])
def test_image_size(model: str, request_: GenerationRequest, expected: str | None) -> None:
    assert image_size_for(request_, limits_for(model)) == expected


async def test_size_request_on_flash_sends_ratio_only(fake: FakeGemini,
                                                      http: aiohttp.ClientSession) -> None:
    outcome = await provider(fake, http).submit(
        call(GenerationRequest(prompt="p", size=(1536, 1024))))
    assert fake.bodies[0]["generationConfig"]["imageConfig"] == {"aspectRatio": "3:2"}
    assert outcome == Finished(images=(ImageData(fake.final_image, "image/png"),),
                               revised_prompt="Here is the image you asked for.")


async def test_n_images_fan_out_into_concurrent_calls(fake: FakeGemini,
                                                      http: aiohttp.ClientSession) -> None:
    outcome = await provider(fake, http).submit(call(GenerationRequest(prompt="p", n=3)))
    assert fake.calls == 3
    assert isinstance(outcome, Finished)
    assert outcome.images == (ImageData(fake.final_image, "image/png"),) * 3


async def test_one_blocked_image_fails_the_fan_out(fake: FakeGemini,
                                                  http: aiohttp.ClientSession) -> None:
    fake.script = ["ok", "image_safety", "ok"]
    with pytest.raises(UpstreamError) as caught:
        await provider(fake, http).submit(call(GenerationRequest(prompt="p", n=3)))
    assert not caught.value.transient
    assert caught.value.code == "content_blocked"


@pytest.mark.parametrize(("behaviour", "code", "fragments"), [
    ("prompt_blocked", "content_blocked", ["prompt was blocked", "PROHIBITED_CONTENT"]),
    ("image_safety", "content_blocked", ["IMAGE_SAFETY", "Prohibited Use policy"]),
    ("no_image", "no_image", ["NO_IMAGE", "describe this scene in words"]),
    ("text_only", "no_image", ["finishReason STOP", "not able to help"]),
    ("thought_only", "no_image", ["IMAGE_OTHER"]),
])
async def test_blocks_arrive_as_200_and_fail_permanently(
        fake: FakeGemini, http: aiohttp.ClientSession, behaviour: str, code: str,
        fragments: list[str]) -> None:
    fake.script = [behaviour]
    error = await submit_error(provider(fake, http), call(GenerationRequest(prompt="p"), PRO))
    assert (error.transient, error.code) == (False, code)
    assert error.message.startswith("gemini: ")
    for fragment in fragments:
        assert fragment in error.message


@pytest.mark.parametrize(("behaviour", "status", "transient", "fragment"), [
    ("invalid", 400, False, "Request contains an invalid argument. (INVALID_ARGUMENT)"),
    ("rate_limited", 429, True, "check your plan and billing details. (RESOURCE_EXHAUSTED)"),
    ("internal", 500, True, "An internal error has occurred"),
    ("unavailable", 503, True, "The model is overloaded. Please try again later."),
])
async def test_error_classification(fake: FakeGemini, http: aiohttp.ClientSession,
                                    behaviour: str, status: int, transient: bool,
                                    fragment: str) -> None:
    fake.script = [behaviour]
    error = await submit_error(provider(fake, http), call(GenerationRequest(prompt="p")))
    assert (error.status, error.transient) == (status, transient)
    assert fragment in error.message


async def test_rate_limit_retry_delay_is_kept(fake: FakeGemini,
                                             http: aiohttp.ClientSession) -> None:
    fake.script = ["rate_limited"]
    with pytest.raises(UpstreamError) as caught:
        await provider(fake, http).submit(call(GenerationRequest(prompt="p")))
    assert caught.value.retry_after == 2.0
    assert caught.value.code == "resource_exhausted"


async def test_wrong_key_is_permanent(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    error = await submit_error(provider(fake, http, key="nope"),
                               call(GenerationRequest(prompt="p")))
    assert (error.status, error.transient, error.code) == (400, False, "invalid_argument")
    assert "API key not valid. Please pass a valid API key." in error.message


async def test_unknown_model_is_permanent(fake: FakeGemini,
                                          http: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamError) as caught:
        await provider(fake, http).submit(call(GenerationRequest(prompt="p"),
                                               "gemini-9-image"))
    assert (caught.value.status, caught.value.transient) == (404, False)
    assert "models/gemini-9-image is not found" in caught.value.message


@pytest.mark.parametrize(("model", "request_", "param"), [
    (PRO, GenerationRequest(prompt="p", images=(ImageRef(url="u"),),
                            mask=ImageRef(url="m")), "mask"),
    (FLASH, GenerationRequest(prompt="p", resolution="2k"), "resolution"),
    (FLASH, GenerationRequest(prompt="p", resolution="4k"), "resolution"),
    (PRO, GenerationRequest(prompt="p", aspect_ratio="2:1"), "aspect_ratio"),
    (PRO, GenerationRequest(prompt="p", aspect_ratio="4:1"), "aspect_ratio"),
    (PRO, GenerationRequest(prompt="p", images=(ImageRef(url="u"),) * 15), "image_urls"),
    (FLASH, GenerationRequest(prompt="p", images=(ImageRef(url="u"),) * 4), "image_urls"),
])
async def test_check_refuses(fake: FakeGemini, http: aiohttp.ClientSession, model: str,
                             request_: GenerationRequest, param: str) -> None:
    with pytest.raises(Unsupported) as caught:
        provider(fake, http).check(request_, model, {})
    assert caught.value.param == param


@pytest.mark.parametrize(("model", "request_"), [
    (PRO, GenerationRequest(prompt="p", images=(ImageRef(url="u"),) * 14, resolution="4k")),
    (FLASH2, GenerationRequest(prompt="p", aspect_ratio="4:1", resolution="2k")),
    (FLASH, GenerationRequest(prompt="p", images=(ImageRef(url="u"),) * 3, resolution="1k",
                              aspect_ratio="auto")),
])
async def test_check_accepts(fake: FakeGemini, http: aiohttp.ClientSession, model: str,
                             request_: GenerationRequest) -> None:
    provider(fake, http).check(request_, model, {})


# -- whole jobs through the native task API ------------------------------------------


def gemini_config(tmp_path: Path, fake: FakeGemini, key: str | None = None
                  ) -> dict[str, Any]:
    return gateway_config(
        tmp_path, {"kind": "gemini", "base_url": fake.url, "api_key": key or fake.api_key,
                   "timeout_seconds": 5},
        {"nano-banana": FLASH, "nano-banana-pro": PRO}, name="gemini")


async def test_job_completes_with_the_final_image(tmp_path: Path, fake: FakeGemini) -> None:
    async with run_gateway(gemini_config(tmp_path, fake)) as gateway:
        task_id = await gateway.submit({"model": "nano-banana-pro", "prompt": "a lighthouse",
                                        "aspect_ratio": "3:4", "resolution": "2k"})
        task = await gateway.wait_terminal(task_id)
        assert task["state"] == "completed", task
        [url] = task["resultUrls"]
        async with gateway.http.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == fake.final_image
    assert fake.calls == 1
    assert fake.bodies[0]["generationConfig"]["imageConfig"] == {"aspectRatio": "3:4",
                                                                 "imageSize": "2K"}


@pytest.mark.parametrize(("behaviour", "fragment"), [
    ("prompt_blocked", "blockReason PROHIBITED_CONTENT"),
    ("image_safety", "finishReason IMAGE_SAFETY"),
    ("no_image", "finishReason NO_IMAGE"),
])
async def test_blocked_job_fails_with_the_reason(tmp_path: Path, fake: FakeGemini,
                                                 behaviour: str, fragment: str) -> None:
    fake.script = [behaviour]
    task = await run_job(gemini_config(tmp_path, fake),
                         {"model": "nano-banana", "prompt": "something"})
    assert task["state"] == "failed"
    assert fragment in task["failMsg"]
    assert "resultUrls" not in task
    assert fake.calls == 1  # permanent: never retried


async def test_wrong_key_fails_the_job(tmp_path: Path, fake: FakeGemini) -> None:
    task = await run_job(gemini_config(tmp_path, fake, key="wrong-key"),
                         {"model": "nano-banana", "prompt": "x"})
    assert task["state"] == "failed"
    assert "API key not valid" in task["failMsg"]
    assert fake.calls == 1


async def test_transient_failures_are_retried(tmp_path: Path, fake: FakeGemini) -> None:
    fake.script = ["unavailable", "rate_limited"]
    async with run_gateway(gemini_config(tmp_path, fake)) as gateway:
        task = await gateway.wait_terminal(
            await gateway.submit({"model": "nano-banana", "prompt": "x", "n": 1}))
        assert task["state"] == "completed", task
        async with gateway.http.get(task["resultUrls"][0]) as resp:
            assert await resp.read() == fake.final_image
    assert fake.calls == 3


IMAGE = b64(solid((9, 9, 9)))


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"image_base64": IMAGE, "mask_base64": IMAGE}, "take no mask"),
    ({"image_base64": [IMAGE] * 4}, "at most 3 reference images, got 4"),
    ({"resolution": "2k"}, "supports resolution 1k, not '2k'"),
])
async def test_refused_with_400_before_any_call(tmp_path: Path, fake: FakeGemini,
                                                fields: dict[str, Any], fragment: str) -> None:
    async with run_gateway(gemini_config(tmp_path, fake)) as gateway, gateway.http.post(
            f"{gateway.url}/api/v1/images/generations", headers=gateway.headers(),
            json={"model": "nano-banana", "prompt": "x", **fields}) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert body["code"] == 400 and fragment in body["msg"]
    assert fake.calls == 0
