"""OpenAI's defaults and values on the OpenAI surface: b64_json where OpenAI answers
it, ``null`` as absent, the optional fields honoured or refused by name, every
quality/size/output_format the SDK's types allow, the gateway's ``extra_body``
extensions, an edit's size from its input, and the models' ``created``."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import openai
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI
from openai.types.image_generate_params import ImageGenerateParamsBase
from PIL import Image

from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import KEY_A, RunningGateway, base_config, merge, run_gateway
from tests.support.images import png_bytes
from tests.support.seed_models import seed_models

PROMPT = "a paper boat on a pond"


def sdk_values(field: str) -> tuple[Any, ...]:
    """The literal values the installed openai-python's generate types allow."""
    hint = get_type_hints(ImageGenerateParamsBase)[field]
    found: list[Any] = []
    pending = [hint]
    while pending:
        item = pending.pop()
        if get_origin(item) is Literal:
            found.extend(get_args(item))
        else:
            pending.extend(get_args(item))
    return tuple(found)


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return merge(base_config(tmp_path), {
        "providers": {"gemini": {"kind": "gemini", "api_key": "g-test-key"}},
        "models": {**seed_models(),
                   "demo-b64": {"routes": [{"provider": "demo", "model": "x"}],
                                "response_format": "b64_json"},
                   "gemini-image": {"routes": [{"provider": "gemini",
                                                "model": "gemini-2.5-flash-image"}]}},
    })


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=KEY_A, max_retries=0) as c:
        yield c


def opened(item: Any) -> Image.Image:
    assert item.b64_json is not None
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))


async def test_response_format_defaults(client: AsyncOpenAI) -> None:
    # GPT Image ids answer b64_json, as OpenAI does; other ids url (seed 003).
    gpt = await client.images.generate(model="gpt-image-2", prompt=PROMPT, size="64x64")
    assert gpt.data is not None and gpt.data[0].b64_json and gpt.data[0].url is None
    other = await client.images.generate(model="nano-banana", prompt=PROMPT, size="64x64")
    assert other.data is not None and other.data[0].url and other.data[0].b64_json is None
    # The model's own setting, and the client's explicit choice, win.
    configured = await client.images.generate(model="demo-b64", prompt=PROMPT, size="64x64")
    assert configured.data is not None and configured.data[0].b64_json
    asked = await client.images.generate(model="gpt-image-2", prompt=PROMPT, size="64x64",
                                         response_format="url")
    assert asked.data is not None and asked.data[0].url
    # Edits answer b64_json on every model, multipart or JSON.
    edited = await client.post("/images/edits", cast_to=openai.types.ImagesResponse, body={
        "model": "nano-banana", "prompt": PROMPT, "size": "64x64", "images": [
            {"image_url": "data:image/png;base64," + base64.b64encode(png_bytes()).decode()}]})
    assert edited.data is not None and edited.data[0].b64_json


async def test_null_means_absent(gateway: RunningGateway) -> None:
    body = {"model": "demo-image", "prompt": PROMPT, "n": None, "size": None, "quality": None,
            "response_format": None, "style": None, "background": None,
            "output_format": None, "output_compression": None, "moderation": None,
            "user": None, "stream": None, "partial_images": None, "seed": None}
    async with gateway.http.post(f"{gateway.url}/v1/images/generations",
                                 headers=gateway.headers(), json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert len(answer["data"]) == 1 and answer["size"] == "1024x1024"


@pytest.mark.parametrize("fmt", ["png", "webp"])
async def test_demo_makes_real_alpha(client: AsyncOpenAI, fmt: Literal["png", "webp"]
                                     ) -> None:
    result = await client.images.generate(
        model="demo-image", prompt=PROMPT, size="64x64", background="transparent",
        output_format=fmt, response_format="b64_json")
    assert result.background == "transparent" and result.output_format == fmt
    assert result.data is not None
    image = opened(result.data[0])
    assert image.format == fmt.upper() and image.mode == "RGBA"
    alpha = image.getchannel("A")
    assert alpha.getpixel((0, 0)) == 0 and alpha.getpixel((32, 32)) == 255


async def test_opaque_and_auto_backgrounds(client: AsyncOpenAI) -> None:
    opaque = await client.images.generate(model="demo-image", prompt=PROMPT, size="64x64",
                                          background="opaque", response_format="b64_json")
    assert opaque.background == "opaque" and opaque.data is not None
    assert opened(opaque.data[0]).mode == "RGB"
    auto = await client.images.generate(model="demo-image", prompt=PROMPT, size="64x64",
                                        background="auto")
    assert auto.background is None  # echoed only when honoured as asked


async def test_demo_applies_output_compression(client: AsyncOpenAI) -> None:
    sizes = {}
    formats: tuple[Literal["jpeg", "webp"], ...] = ("jpeg", "webp")
    for fmt in formats:
        for compression in (5, 95):
            result = await client.images.generate(
                model="demo-image", prompt=PROMPT, size="256x256", output_format=fmt,
                output_compression=compression, response_format="b64_json")
            assert result.data is not None and result.data[0].b64_json is not None
            sizes[fmt, compression] = len(base64.b64decode(result.data[0].b64_json))
        assert sizes[fmt, 5] < sizes[fmt, 95] / 2


async def test_transparent_jpeg_is_refused(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(model="demo-image", prompt=PROMPT,
                                     background="transparent", output_format="jpeg")
    assert caught.value.param == "background"


@pytest.mark.parametrize(("field", "value"), [
    ("background", "transparent"), ("style", "vivid"), ("moderation", "low"),
    ("output_compression", 50), ("seed", 3)])
async def test_a_provider_that_cannot_refuses_naming_the_model(
        gateway: RunningGateway, field: str, value: Any) -> None:
    async with gateway.http.post(f"{gateway.url}/v1/images/generations",
                                 headers=gateway.headers(), json={
                                     "model": "gemini-image", "prompt": PROMPT,
                                     field: value}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["param"] == field and "'gemini-image'" in error["message"]


async def test_demo_refuses_input_fidelity(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.edit(model="demo-image", prompt=PROMPT, input_fidelity="high",
                                 image=("in.png", png_bytes()))
    assert caught.value.param == "input_fidelity" and "'demo-image'" in caught.value.message


async def test_every_sdk_value_is_honoured_or_mapped(client: AsyncOpenAI) -> None:
    # quality: every value of openai-python's Literal maps to a price tier (xhigh and
    # max to the high one).
    qualities = sdk_values("quality")
    assert {"low", "medium", "high", "auto", "standard", "hd"} <= set(qualities)
    for quality in qualities:
        result = await client.images.generate(model="gpt-image-2", prompt=PROMPT,
                                              size="64x64", quality=quality)
        assert result.usage is not None
        expected = 18 if quality in ("high", "hd", "xhigh", "max", "auto") else \
            10 if quality == "medium" else 2
        assert result.usage.model_extra == {"prompt_tokens": 0, "completion_tokens": 0,
                                            "credits": expected}, quality
    for size in sdk_values("size"):
        result = await client.images.generate(model="demo-image", prompt=PROMPT, size=size)
        assert result.size == ("1024x1024" if size == "auto" else size)
    for fmt in sdk_values("output_format"):
        if fmt in ("gif", "svg"):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.images.generate(model="demo-image", prompt=PROMPT,
                                             output_format=fmt)
            assert caught.value.param == "output_format"
            assert "png, jpeg or webp" in caught.value.message
            continue
        result = await client.images.generate(model="demo-image", prompt=PROMPT, size="64x64",
                                              output_format=fmt, response_format="b64_json")
        assert result.output_format == fmt and result.data is not None
        assert opened(result.data[0]).format == fmt.upper()


async def test_refused_quality_lists_the_supported_values(tmp_path: Path) -> None:
    config = merge(base_config(tmp_path), {"models": {"tiered": {
        "routes": [{"provider": "demo", "model": "x"}],
        "credits": {"1k": {"standard": 1, "high": 3}}}}})
    async with run_gateway(config) as gateway, AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=KEY_A, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(model="tiered", prompt=PROMPT, quality="medium")
    assert caught.value.param == "quality"
    assert "standard, high" in caught.value.message


async def test_extensions_pass_through_extra_body(client: AsyncOpenAI) -> None:
    async def seeded(seed: int) -> bytes:
        result = await client.images.generate(
            model="demo-image", prompt=PROMPT, response_format="b64_json",
            extra_body={"seed": seed, "aspect_ratio": "16:9", "resolution": "1k"})
        assert result.size == "1360x768" and result.data is not None
        assert result.data[0].b64_json is not None
        return base64.b64decode(result.data[0].b64_json)

    first, again, other = await seeded(7), await seeded(7), await seeded(8)
    assert first == again and first != other


async def test_edit_without_size_follows_the_input(client: AsyncOpenAI) -> None:
    result = await client.images.edit(model="demo-image", prompt=PROMPT,
                                      image=("wide.png", png_bytes(300, 200)))
    assert result.data is not None
    width, height = opened(result.data[0]).size
    assert abs(width / height - 1.5) < 0.02 and result.size == f"{width}x{height}"
    tall = await client.images.edit(model="nano-banana", prompt=PROMPT,
                                    image=("tall.png", png_bytes(90, 160)))
    assert tall.data is not None
    width, height = opened(tall.data[0]).size
    assert abs(width / height - 9 / 16) < 0.02


async def test_edit_size_from_input_with_openai_sizes(config: dict[str, Any]) -> None:
    fake = FakeOpenAI()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.base_url = str(server.make_url("/v1"))
    config = merge(config, {
        "providers": {"openai": {"kind": "openai", "base_url": fake.base_url,
                                 "api_key": fake.key}},
        "models": {**config["models"], **{
            name: {"routes": [{"provider": "openai", "model": name}]}
            for name in ("gpt-image-1", "dall-e-2")}}})
    try:
        async with run_gateway(config) as gateway, AsyncOpenAI(
                base_url=f"{gateway.url}/v1", api_key=KEY_A, max_retries=0) as client:
            await client.images.edit(model="gpt-image-1", prompt=PROMPT,
                                     image=("wide.png", png_bytes(300, 200)))
            await client.images.edit(model="dall-e-2", prompt=PROMPT,
                                     image=("wide.png", png_bytes(300, 200)))
    finally:
        await server.close()
    sizes = [call.fields["size"] for call in fake.calls("/v1/images/edits")]
    # The nearest size each model renders: a landscape one, or dall-e-2's square.
    assert sizes == [["1536x1024"], ["1024x1024"]]


async def test_models_report_when_they_were_configured(gateway: RunningGateway,
                                                       client: AsyncOpenAI) -> None:
    models = [m async for m in client.models.list()]
    now = time.time()
    assert all(now - 600 < m.created <= now for m in models)


async def test_routes_that_cannot_honour_are_passed_over(tmp_path: Path) -> None:
    config = merge(base_config(tmp_path), {
        "providers": {"gemini": {"kind": "gemini", "api_key": "g-test-key"},
                      "flaky": {"kind": "demo", "options": {"failure_rate": 1.0,
                                                           "failure_kind": "transient"}}},
        "models": {
            "first-cannot": {"routes": [{"provider": "gemini", "model": "gemini-2.5-flash-image"},
                                        {"provider": "demo", "model": "x"}]},
            "fallback-cannot": {"routes": [
                {"provider": "flaky", "model": "x"},
                {"provider": "gemini", "model": "gemini-2.5-flash-image"},
                {"provider": "demo", "model": "x"}]}}})
    async with run_gateway(config) as gateway, AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=KEY_A, max_retries=0) as client:
        for model in ("first-cannot", "fallback-cannot"):
            raw = await client.images.with_raw_response.generate(
                model=model, prompt=PROMPT, size="64x64", background="transparent")
            assert raw.parse().background == "transparent"
            job = await gateway.state.store.get_job(raw.headers["x-muxproxy-job-id"])
            # Served by the demo, never by gemini, which cannot make a transparent image.
            assert job is not None and job.provider == "demo", model
