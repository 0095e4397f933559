"""The OpenAI and OpenAI-compatible adapters against their fake, then end to end."""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from muxproxy.clock import SystemClock
from muxproxy.generation import GenerationRequest, ImageRef, PartialImage
from muxproxy.providers import provider_class
from muxproxy.providers.base import (
    Finished,
    ImageData,
    ImageLink,
    Reference,
    Unsupported,
    UpstreamError,
)
from muxproxy.providers.openai import OpenAIProvider
from muxproxy.providers.openai_compatible import OpenAICompatibleProvider, form_value
from muxproxy.settings import ProviderSettings, SettingsError
from tests.fakes.openai import FakeOpenAI, make_image
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
PNG = make_image((10, 20, 30))


@pytest.fixture
async def fake(aiohttp_server: AiohttpServer) -> FakeOpenAI:
    return await serve(FakeOpenAI(), aiohttp_server)


@pytest.fixture
async def compat(aiohttp_server: AiohttpServer) -> FakeOpenAI:
    return await serve(FakeOpenAI("mm-test-key-0001", compatible=True), aiohttp_server)


@pytest.fixture
def openai(fake: FakeOpenAI, http: aiohttp.ClientSession) -> OpenAIProvider:
    return make_provider(OpenAIProvider, fake, http)


@pytest.fixture
def compatible(compat: FakeOpenAI, http: aiohttp.ClientSession) -> OpenAICompatibleProvider:
    return make_provider(OpenAICompatibleProvider, compat, http)


def test_kinds_are_registered() -> None:
    assert provider_class("openai") is OpenAIProvider
    assert provider_class("openai-compatible") is OpenAICompatibleProvider


# --- request translation -------------------------------------------------------------

async def test_gpt_image_generation(openai: OpenAIProvider, fake: FakeOpenAI) -> None:
    outcome = await openai.submit(make_call(
        "gpt-image-2", n=2, aspect_ratio="16:9", resolution="2k", quality="hd",
        output_format="webp", extra={"background": "opaque", "moderation": "low",
                                     "user": "u-1", "response_format": "url"}))
    assert outcome == Finished(images=(ImageData(fake.image), ImageData(fake.image)))
    [call] = fake.calls(GENERATIONS)
    assert call.headers["Authorization"] == f"Bearer {fake.key}"
    assert call.json == {"model": "gpt-image-2", "prompt": "a lighthouse at dusk", "n": 2,
                         "size": "2720x1536", "quality": "high", "output_format": "webp",
                         "background": "opaque", "moderation": "low", "user": "u-1"}


@pytest.mark.parametrize(("model", "fields", "size"), [
    ("gpt-image-2", {"aspect_ratio": "16:9", "resolution": "4k"}, "3840x2160"),
    ("gpt-image-2", {"aspect_ratio": "1:1", "resolution": "4k"}, "2880x2880"),
    ("gpt-image-2", {"aspect_ratio": "3:1", "resolution": "4k"}, "3840x1280"),
    ("gpt-image-2", {"aspect_ratio": "9:16"}, "768x1360"),
    ("gpt-image-2", {"resolution": "2k"}, "2048x2048"),
    ("gpt-image-2", {"size": (1536, 864)}, "1536x864"),
    ("gpt-image-2", {"aspect_ratio": "auto"}, "auto"),
    ("gpt-image-2", {}, None),
    ("gpt-image-1", {"aspect_ratio": "4:3"}, "1536x1024"),
    ("gpt-image-1.5", {"aspect_ratio": "5:4"}, "1536x1024"),
    ("gpt-image-1-mini", {"aspect_ratio": "9:16", "resolution": "1k"}, "1024x1536"),
    ("gpt-image-1", {"aspect_ratio": "1:1"}, "1024x1024"),
    ("gpt-image-1", {"aspect_ratio": "auto"}, "auto"),
    ("dall-e-3", {"aspect_ratio": "16:9"}, "1792x1024"),
    ("dall-e-3", {"aspect_ratio": "2:3"}, "1024x1792"),
    ("dall-e-3", {"aspect_ratio": "auto"}, None),
    ("dall-e-2", {"size": (512, 512)}, "512x512"),
    ("dall-e-2", {"resolution": "1k"}, "1024x1024"),
])
async def test_size_mapping_is_accepted_upstream(
        openai: OpenAIProvider, fake: FakeOpenAI, model: str, fields: dict[str, Any],
        size: str | None) -> None:
    await openai.submit(make_call(model, **fields))
    [call] = fake.calls(GENERATIONS)
    assert call.json.get("size") == size


@pytest.mark.parametrize(("model", "quality", "sent"), [
    ("gpt-image-1", "standard", "low"), ("gpt-image-1", "medium", "medium"),
    ("gpt-image-1", "auto", "auto"), ("dall-e-3", "hd", "hd"), ("dall-e-3", "high", "hd"),
    ("dall-e-3", "low", "standard"), ("dall-e-3", "auto", None), ("dall-e-2", "standard", None),
])
async def test_quality_mapping(openai: OpenAIProvider, fake: FakeOpenAI, model: str,
                               quality: str, sent: str | None) -> None:
    await openai.submit(make_call(model, quality=quality))
    assert fake.calls(GENERATIONS)[0].json.get("quality") == sent


async def test_dall_e_3_url_result_and_route_params(
        openai: OpenAIProvider, fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    outcome = await openai.submit(make_call("dall-e-3", params={"style": "natural"},
                                            extra={"style": "vivid", "user": "u-2"}))
    assert isinstance(outcome, Finished)
    [link] = outcome.images
    assert isinstance(link, ImageLink)
    assert outcome.revised_prompt == "revised: a lighthouse at dusk"
    async with http.get(link.url) as resp:
        assert await resp.read() == fake.image
    # Route params are the operator's fixed choice: they win over the client's.
    assert fake.calls(GENERATIONS)[0].json == {
        "model": "dall-e-3", "prompt": "a lighthouse at dusk", "n": 1, "style": "natural",
        "user": "u-2"}


async def test_dall_e_b64_json_on_request(openai: OpenAIProvider, fake: FakeOpenAI) -> None:
    outcome = await openai.submit(make_call("dall-e-2", n=3,
                                            params={"response_format": "b64_json"}))
    assert isinstance(outcome, Finished)
    assert outcome.images == (ImageData(fake.image),) * 3
    assert fake.downloads == 0


async def test_unknown_model_gets_no_rules(openai: OpenAIProvider, fake: FakeOpenAI) -> None:
    call = make_call("gpt-image-9", size=(1000, 1000), quality="hd")
    assert openai.fields(call.request, call.upstream_model, {})["size"] == "1000x1000"


@pytest.mark.parametrize(("model", "fields", "param"), [
    ("dall-e-3", {"n": 2}, "n"),
    ("dall-e-3", {"images": (ImageRef(url="https://x.test/a.png"),)}, "image"),
    ("dall-e-2", {"images": (ImageRef(url="https://x.test/a.png"),) * 2}, "image"),
    ("gpt-image-1", {"mask": ImageRef(url="https://x.test/m.png")}, "mask"),
    ("gpt-image-1", {"size": (1792, 1024)}, "size"),
    ("dall-e-3", {"size": (1536, 1024)}, "size"),
    ("dall-e-2", {"size": (1024, 512)}, "size"),
    ("gpt-image-2", {"size": (1000, 1000)}, "size"),
    ("gpt-image-2", {"size": (2048, 512)}, "size"),
    ("gpt-image-2", {"size": (3840, 2176)}, "size"),
    ("gpt-image-2", {"aspect_ratio": "4:1"}, "aspect_ratio"),
    ("gpt-image-1", {"resolution": "2k"}, "resolution"),
    ("dall-e-3", {"aspect_ratio": "16:9", "resolution": "4k"}, "resolution"),
    ("dall-e-2", {"aspect_ratio": "16:9"}, "aspect_ratio"),
    ("dall-e-3", {"quality": "medium"}, "quality"),
    ("dall-e-2", {"quality": "hd"}, "quality"),
    ("dall-e-3", {"output_format": "jpeg"}, "output_format"),
    ("gpt-image-1", {"extra": {"style": "vivid"}}, "style"),
    ("dall-e-3", {"extra": {"background": "transparent"}}, "background"),
    ("gpt-image-1", {"extra": {"moderation": "high"}}, "moderation"),
    ("gpt-image-1", {"extra": {"output_compression": 101}}, "output_compression"),
    ("gpt-image-1", {"output_format": "jpeg", "extra": {"background": "transparent"}},
     "background"),
])
def test_check_refuses_what_the_model_cannot_do(
        openai: OpenAIProvider, fake: FakeOpenAI, model: str, fields: dict[str, Any],
        param: str) -> None:
    with pytest.raises(Unsupported) as info:
        openai.check(GenerationRequest(prompt="p", **fields), model, {})
    assert info.value.param == param
    assert model in info.value.message or param in info.value.message
    assert fake.requests == []


def test_check_refuses_unknown_route_params(openai: OpenAIProvider) -> None:
    with pytest.raises(Unsupported, match="'seed'"):
        openai.check(GenerationRequest(prompt="p"), "gpt-image-1", {"seed": 3})


# --- edits (multipart) -----------------------------------------------------------------

async def test_edit_with_one_image_and_mask(openai: OpenAIProvider, fake: FakeOpenAI) -> None:
    mask = make_image((0, 0, 0))
    outcome = await openai.submit(make_call(
        "gpt-image-1.5", refs=(data_ref(PNG),), mask=data_ref(mask), n=2,
        extra={"input_fidelity": "high", "output_compression": 80}, output_format="webp"))
    assert isinstance(outcome, Finished) and len(outcome.images) == 2
    [call] = fake.calls(EDITS)
    assert call.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert [(u.data, u.content_type) for u in call.files["image"]] == [(PNG, "image/png")]
    assert call.files["image"][0].filename == "image0.png"
    assert [u.data for u in call.files["mask"]] == [mask]
    assert "image[]" not in call.files
    assert call.fields == {"model": ["gpt-image-1.5"], "prompt": ["a lighthouse at dusk"],
                           "n": ["2"], "output_format": ["webp"],
                           "input_fidelity": ["high"], "output_compression": ["80"]}


async def test_edit_with_several_images_uses_array_parts(
        openai: OpenAIProvider, fake: FakeOpenAI) -> None:
    jpeg = make_image((1, 2, 3), "JPEG")
    # A URL reference arrives fetched already (the runner downloads it, guarded).
    url_ref = Reference(url="https://cdn.example/ref.png", data=fake.image,
                        content_type="image/png")
    await openai.submit(make_call("gpt-image-2", refs=(data_ref(PNG), data_ref(jpeg,
                                                                            "image/jpeg"),
                                                       url_ref)))
    [call] = fake.calls(EDITS)
    assert "image" not in call.files
    assert [(u.data, u.content_type, u.filename) for u in call.files["image[]"]] == [
        (PNG, "image/png", "image0.png"), (jpeg, "image/jpeg", "image1.jpeg"),
        (fake.image, "image/png", "image2.png")]
    assert fake.downloads == 0


def test_form_values() -> None:
    assert [form_value(v) for v in (True, False, 3, 0.5, "x")] == ["true", "false", "3", "0.5",
                                                                    "x"]


async def test_fake_rejects_edit_without_image(fake: FakeOpenAI,
                                               http: aiohttp.ClientSession) -> None:
    form = aiohttp.FormData({"model": "gpt-image-1", "prompt": "p"}, default_to_multipart=True)
    async with http.post(f"{fake.base_url}/images/edits", data=form,
                         headers={"Authorization": f"Bearer {fake.key}"}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["param"] == "image"
    assert body["error"]["code"] == "missing_required_parameter"


async def test_fake_rejects_misnamed_image_part(fake: FakeOpenAI,
                                               http: aiohttp.ClientSession) -> None:
    form = aiohttp.FormData({"model": "gpt-image-1", "prompt": "p"})
    form.add_field("images", PNG, filename="a.png", content_type="image/png")
    async with http.post(f"{fake.base_url}/images/edits", data=form,
                         headers={"Authorization": f"Bearer {fake.key}"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "unknown_parameter"


# --- errors --------------------------------------------------------------------------

async def fails(provider: OpenAICompatibleProvider, model: str = "gpt-image-1",
                **fields: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await provider.submit(make_call(model, **fields))
    return info.value


async def test_wrong_key_is_permanent(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    provider = make_provider(OpenAIProvider, fake, http, key="sk-wrong-key-xx")
    error = await fails(provider)
    assert (error.transient, error.status) == (False, 401)
    assert error.message.startswith("upstream: Incorrect API key provided: sk-***xx.")


async def test_moderation_block_is_permanent_with_message(openai: OpenAIProvider) -> None:
    error = await fails(openai, prompt="something forbidden")
    assert (error.transient, error.code, error.status) == (False, "moderation_blocked", 400)
    assert "rejected as a result of our safety system" in error.message


@pytest.mark.parametrize(("status", "transient"), [
    (400, False), (401, False), (403, False), (404, False), (422, False),
    (408, True), (409, True), (429, True), (500, True), (503, True),
])
async def test_status_classification(openai: OpenAIProvider, fake: FakeOpenAI, status: int,
                                     transient: bool) -> None:
    fake.fail(status)
    error = await fails(openai)
    assert (error.status, error.transient) == (status, transient)
    assert error.code == ("upstream_unavailable" if transient else "upstream_error")
    assert error.message.startswith("upstream: ") and len(error.message) > 15


async def test_retry_after_is_honoured(openai: OpenAIProvider, fake: FakeOpenAI) -> None:
    fake.fail(429, headers={"Retry-After": "7"})
    fake.fail(429, headers={"Retry-After": "7", "retry-after-ms": "1500"})
    assert (await fails(openai)).retry_after == 7.0
    error = await fails(openai)
    assert error.retry_after == 1.5
    assert "Rate limit reached" in error.message


async def test_x_should_retry_overrides_status(openai: OpenAIProvider,
                                               fake: FakeOpenAI) -> None:
    fake.fail(500, headers={"x-should-retry": "false"})
    fake.fail(400, headers={"x-should-retry": "true"})
    first, second = await fails(openai), await fails(openai)
    assert (first.transient, first.code) == (False, "upstream_error")
    assert (second.transient, second.code) == (True, "upstream_unavailable")


async def test_non_json_error_body(openai: OpenAIProvider, fake: FakeOpenAI) -> None:
    fake.fail(502, body="<html>bad gateway</html>")
    error = await fails(openai)
    assert (error.transient, error.message) == (True, "upstream: HTTP 502")


async def test_connection_refused_is_transient(http: aiohttp.ClientSession) -> None:
    settings = ProviderSettings(name="gone", kind="openai", base_url="http://127.0.0.1:9/v1",
                                api_key="k", timeout_seconds=2)
    error = await fails(OpenAIProvider(settings, http, SystemClock()))
    assert (error.transient, error.code) == (True, "upstream_unavailable")


# --- openai-compatible ---------------------------------------------------------------

async def test_compatible_passes_fields_through(compatible: OpenAICompatibleProvider,
                                                compat: FakeOpenAI) -> None:
    outcome = await compatible.submit(make_call(
        "imagen-3", size=(1000, 1000), quality="hd", extra={"style": "vivid"},
        params={"seed": 42}))
    assert isinstance(outcome, Finished)
    [link] = outcome.images
    assert isinstance(link, ImageLink) and link.url.startswith("http://127.0.0.1")
    assert outcome.revised_prompt == "revised: a lighthouse at dusk"
    assert compat.calls(GENERATIONS)[0].json == {
        "model": "imagen-3", "prompt": "a lighthouse at dusk", "n": 1, "size": "1000x1000",
        "quality": "hd", "style": "vivid", "seed": 42}


async def test_compatible_b64_and_aspect_ratio(compatible: OpenAICompatibleProvider,
                                               compat: FakeOpenAI) -> None:
    outcome = await compatible.submit(make_call(
        "imagen-3", aspect_ratio="16:9", params={"response_format": "b64_json"}))
    assert outcome == Finished(images=(ImageData(compat.image),),
                               revised_prompt="revised: a lighthouse at dusk")
    assert compat.calls(GENERATIONS)[0].json["size"] == "1360x768"


@pytest.mark.parametrize(("status", "transient", "text"), [
    (402, False, "Insufficient balance"), (502, True, "Upstream provider error"),
    (401, False, "Request failed"),
])
async def test_compatible_errors(compatible: OpenAICompatibleProvider, compat: FakeOpenAI,
                                 status: int, transient: bool, text: str) -> None:
    compat.fail(status)
    error = await fails(compatible, "imagen-3")
    assert (error.status, error.transient) == (status, transient)
    assert text in error.message


async def test_compatible_200_with_error_body(compatible: OpenAICompatibleProvider,
                                              compat: FakeOpenAI) -> None:
    compat.fail(200, body={"error": {"message": "model does not support images"}})
    compat.fail(200, body={"data": [{"b64_json": "@@not base64@@"}]})
    first, second = await fails(compatible), await fails(compatible)
    assert (first.transient, first.message) == (False,
                                                "upstream: model does not support images")
    assert (second.transient, "invalid base64" in second.message) == (False, True)


async def test_streams_partials_to_the_call(openai: OpenAIProvider, fake: FakeOpenAI) -> None:
    seen: list[PartialImage] = []
    call = make_call("gpt-image-1", extra={"partial_images": 2}, quality="high")
    outcome = await openai.submit(replace(call, on_partial=seen.append))
    assert isinstance(outcome, Finished)
    assert [image.data for image in outcome.images if isinstance(image, ImageData)] == [
        fake.image]
    assert [(p.index, base64.b64decode(p.b64_json)) for p in seen] == list(
        enumerate(fake.partials))
    assert seen[0].fields == {"size": "1024x1024", "quality": "high", "background": "opaque",
                              "output_format": "png"}
    [sent] = fake.calls(GENERATIONS)
    assert sent.json["stream"] is True and sent.json["partial_images"] == 2


async def test_stream_only_for_gpt_image_and_partials(openai: OpenAIProvider,
                                                      fake: FakeOpenAI) -> None:
    await openai.submit(make_call("dall-e-3", extra={"partial_images": 2}))
    await openai.submit(make_call("gpt-image-1", extra={"partial_images": 0}))
    assert all("stream" not in call.json for call in fake.calls(GENERATIONS))


async def test_stream_error_event_is_classified(openai: OpenAIProvider,
                                                fake: FakeOpenAI) -> None:
    fake.stream_error = {"message": "blocked", "type": "image_generation_user_error",
                         "param": None, "code": "moderation_blocked"}
    with pytest.raises(UpstreamError) as caught:
        await openai.submit(make_call("gpt-image-1", extra={"partial_images": 1}))
    assert caught.value.code == "moderation_blocked" and not caught.value.transient
    assert caught.value.message == "upstream: blocked"
    fake.stream_error = {"message": "oops", "type": "server_error", "param": None,
                         "code": None}
    with pytest.raises(UpstreamError) as caught:
        await openai.submit(make_call("gpt-image-1", extra={"partial_images": 1}))
    assert caught.value.transient


async def test_stream_edit_is_multipart(openai: OpenAIProvider, fake: FakeOpenAI) -> None:
    seen: list[PartialImage] = []
    call = make_call("gpt-image-1", refs=(data_ref(PNG),), extra={"partial_images": 3})
    outcome = await openai.submit(replace(call, on_partial=seen.append))
    assert isinstance(outcome, Finished) and len(seen) == 3
    [sent] = fake.calls(EDITS)
    assert sent.fields["stream"] == ["true"] and sent.fields["partial_images"] == ["3"]


def test_compatible_needs_a_base_url(http: aiohttp.ClientSession) -> None:
    with pytest.raises(SettingsError, match="base_url"):
        OpenAICompatibleProvider(ProviderSettings(name="mm", kind="openai-compatible"), http,
                                 SystemClock())


# --- end to end through the native task API ------------------------------------------

def _config(tmp_path: Path, fake: FakeOpenAI, *, kind: str = "openai",
            **jobs: Any) -> dict[str, Any]:
    return gateway_config(
        tmp_path, {"kind": kind, "base_url": fake.base_url, "api_key": fake.key,
                   "timeout_seconds": 10},
        {"gpt-image-2": "gpt-image-2", "dall-e-3": "dall-e-3", "imagen-3": "imagen-3"},
        **jobs)


@pytest.mark.parametrize("model", ["gpt-image-2", "dall-e-3"])
async def test_e2e_success(tmp_path: Path, fake: FakeOpenAI, model: str) -> None:
    async with run_gateway(_config(tmp_path, fake)) as gw:
        task_id = await gw.submit({"model": model, "prompt": "a red fox",
                                   "aspect_ratio": "16:9"})
        task = await gw.wait_terminal(task_id)
        assert task["state"] == "completed", task
        [url] = task["resultUrls"]
        async with gw.http.get(url) as resp:
            assert await resp.read() == fake.image
    [call] = fake.calls(GENERATIONS)
    assert call.json["size"] == ("1360x768" if model == "gpt-image-2" else "1792x1024")
    assert fake.downloads == (1 if model == "dall-e-3" else 0)


async def test_e2e_edit_sends_the_uploaded_image(tmp_path: Path, fake: FakeOpenAI) -> None:
    async with run_gateway(_config(tmp_path, fake)) as gw:
        task_id = await gw.submit({"model": "gpt-image-2", "prompt": "make it blue",
                                   "image_base64": b64(PNG)})
        assert (await gw.wait_terminal(task_id))["state"] == "completed"
    [call] = fake.calls(EDITS)
    assert [u.data for u in call.files["image"]] == [PNG]


async def test_e2e_permanent_failure(tmp_path: Path, fake: FakeOpenAI) -> None:
    task = await run_job(_config(tmp_path, fake),
                         {"model": "gpt-image-2", "prompt": "a forbidden thing"})
    assert task["state"] == "failed"
    assert task["failCode"] == "moderation_blocked"
    assert "rejected as a result of our safety system" in task["failMsg"]
    assert len(fake.calls(GENERATIONS)) == 1


@pytest.mark.parametrize("status", [500, 429])
async def test_e2e_transient_then_success(tmp_path: Path, fake: FakeOpenAI,
                                          status: int) -> None:
    fake.fail(status, times=2, headers={"Retry-After": "1"})
    task = await run_job(_config(tmp_path, fake), {"model": "gpt-image-2", "prompt": "a fox"})
    assert task["state"] == "completed", task
    assert len(fake.calls(GENERATIONS)) == 3


async def test_e2e_unsupported_is_refused_before_any_call(tmp_path: Path,
                                                          fake: FakeOpenAI) -> None:
    async with run_gateway(_config(tmp_path, fake)) as gw, gw.http.post(
            f"{gw.url}/api/v1/images/generations", headers=gw.headers(),
            json={"model": "dall-e-3", "prompt": "two foxes", "n": 2}) as resp:
        assert resp.status == 400
        assert "dall-e-3 makes at most 1 image" in (await resp.json())["msg"]
    assert fake.requests == []


async def test_e2e_deadline(tmp_path: Path, fake: FakeOpenAI) -> None:
    fake.hang = True
    async with run_gateway(_config(tmp_path, fake, deadline_seconds=0.5)) as gw:
        started = time.monotonic()
        task = await gw.wait_terminal(await gw.submit({"model": "gpt-image-2",
                                                       "prompt": "slow"}), timeout=5)
        assert time.monotonic() - started < 3
    assert task["state"] == "failed"
    assert task["failCode"] == "deadline_exceeded"
    assert "deadline" in task["failMsg"]
    assert len(fake.calls(GENERATIONS)) == 1


async def test_e2e_compatible(tmp_path: Path, compat: FakeOpenAI) -> None:
    compat.fail(402)
    async with run_gateway(_config(tmp_path, compat, kind="openai-compatible")) as gw:
        failed = await gw.wait_terminal(await gw.submit({"model": "imagen-3",
                                                         "prompt": "a lake"}))
        done = await gw.wait_terminal(await gw.submit({"model": "imagen-3",
                                                       "prompt": "a lake"}))
        assert done["state"] == "completed", done
        async with gw.http.get(done["resultUrls"][0]) as resp:
            assert await resp.read() == compat.image
    assert failed["state"] == "failed"
    assert failed["failMsg"] == "upstream: Insufficient balance"
    assert len(compat.calls(GENERATIONS)) == 2
