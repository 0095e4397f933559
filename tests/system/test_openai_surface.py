"""The OpenAI-compatible surface, driven by the official ``openai`` SDK over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import openai
import orjson
import pytest
from openai import AsyncOpenAI
from openai.types import ImagesResponse
from PIL import Image

from muxproxy.auth import hash_key
from muxproxy.errors import InsufficientCredits, MuxError, RateLimited, UnsupportedMediaType
from muxproxy.surfaces import openai as surface
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, base_config, merge, run_gateway
from tests.support.images import image_size, png_bytes
from tests.support.references import ALLOW_LOOPBACK, ImageServer, record_calls
from tests.support.seed_models import seed_models

T = TypeVar("T")
PROMPT = "a lighthouse in a storm"
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return merge(base_config(tmp_path), {
        "limits": {"max_body_bytes": 300_000, "max_image_bytes": 60_000,
                   **ALLOW_LOOPBACK["limits"]},
        "providers": {"demo-broken": {"kind": "demo", "options": {"failure_rate": 1.0}}},
        "models": {**seed_models(),
                   "demo-broken": {"routes": [{"provider": "demo-broken", "model": "x"}]}},
    })


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=KEY_A, max_retries=0) as c:
        yield c


async def download(gateway: RunningGateway, url: str) -> bytes:
    async with gateway.http.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_generate_with_urls_is_a_job_the_native_api_sees(
        gateway: RunningGateway, client: AsyncOpenAI) -> None:
    raw = await client.images.with_raw_response.generate(
        model="demo-image", prompt=PROMPT, n=2, size="256x128")
    result = raw.parse()
    job_id = raw.headers["x-muxproxy-job-id"]

    assert result.data is not None and len(result.data) == 2
    assert result.size == "256x128" and result.output_format == "png"
    assert result.usage is not None and result.usage.total_tokens == 0
    first = b""
    for item in result.data:
        assert item.b64_json is None and item.url is not None
        assert item.revised_prompt == PROMPT
        data = await download(gateway, item.url)
        assert image_size(data) == (256, 128)
        first = first or data

    task = await gateway.task(job_id)
    assert task["state"] == "completed" and task["model"] == "demo/demo-image"
    assert len(task["resultUrls"]) == 2
    assert await download(gateway, task["resultUrls"][0]) == first
    job = await gateway.state.store.get_job(job_id)
    assert job is not None and job.surface == "openai" and job.request.n == 2


async def test_sync_client_in_a_thread(gateway: RunningGateway, tmp_path: Path) -> None:
    source = tmp_path / "photo.png"
    source.write_bytes(png_bytes())

    def use_sync_client() -> tuple[list[str], ImagesResponse]:
        with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY_A,
                           max_retries=0) as client, source.open("rb") as image:
            return ([m.id for m in client.models.list()],
                    client.images.edit(model="demo-image", image=image, prompt=PROMPT,
                                       size="64x64"))

    ids, edited = await asyncio.to_thread(use_sync_client)
    assert "demo-image" in ids
    # Edits answer b64_json when no response_format is sent, as OpenAI does.
    assert edited.data is not None and edited.data[0].b64_json is not None
    assert edited.data[0].url is None
    assert image_size(base64.b64decode(edited.data[0].b64_json)) == (64, 64)


async def test_generate_b64_json(gateway: RunningGateway, client: AsyncOpenAI) -> None:
    by_url = await client.images.generate(model="demo-image", prompt=PROMPT, size="128x128")
    by_b64 = await client.images.generate(model="demo-image", prompt=PROMPT, size="128x128",
                                          response_format="b64_json")
    assert by_b64.data is not None and by_url.data is not None
    [item] = by_b64.data
    assert item.url is None and item.b64_json is not None
    # The demo renders the same prompt identically: the inline bytes are the image.
    assert base64.b64decode(item.b64_json) == await download(gateway, str(by_url.data[0].url))
    assert item.revised_prompt == PROMPT


async def test_model_may_be_omitted(gateway: RunningGateway, client: AsyncOpenAI) -> None:
    raw = await client.images.with_raw_response.generate(prompt=PROMPT, size="64x64")
    job = await gateway.state.store.get_job(raw.headers["x-muxproxy-job-id"])
    assert job is not None and job.model == next(iter(gateway.settings.models))


async def test_usage_carries_the_price(client: AsyncOpenAI) -> None:
    # 1296x1296 is a 2K image by area; gpt-image-2 at 2K high costs 40 credits each.
    result = await client.images.generate(model="gpt-image-2", prompt=PROMPT, n=2,
                                          size="1296x1296", quality="high")
    assert as_dict(result.to_dict()["usage"])["credits"] == 80
    assert result.quality == "high"


async def test_edit_multipart_file_and_mask(gateway: RunningGateway, client: AsyncOpenAI,
                                            tmp_path: Path) -> None:
    source, mask = tmp_path / "source.png", tmp_path / "mask.png"
    source.write_bytes(png_bytes(40, 40))
    mask.write_bytes(png_bytes(40, 40, (0, 0, 0)))
    calls = record_calls(gateway.state.providers["demo"])
    with source.open("rb") as image_file, mask.open("rb") as mask_file:
        raw = await client.images.with_raw_response.edit(
            image=image_file, mask=mask_file, prompt=PROMPT, model="demo-image", n=2,
            size="64x64")
    result = raw.parse()
    assert result.data is not None and len(result.data) == 2

    job = await gateway.state.store.get_job(raw.headers["x-muxproxy-job-id"])
    assert job is not None and job.request.n == 2
    [ref] = job.request.images
    assert ref.blob is not None and ref.content_type == "image/png"
    assert job.request.mask is not None and job.request.mask.blob is not None
    [call] = calls
    assert [r.data for r in call.images] == [source.read_bytes()]
    assert call.mask is not None and call.mask.data == mask.read_bytes()
    # The job has ended: its uploads are gone, its results stay.
    await gateway.state.scheduler.wait_idle()
    assert not await gateway.state.storage.exists(ref.blob)
    assert not await gateway.state.storage.exists(job.request.mask.blob)
    # The record names the files but holds none of their bytes.
    assert job.client_params["image"] == [f"<file 'source.png', {source.stat().st_size} bytes>"]
    assert job.client_params["n"] == "2"


async def test_edit_with_a_list_of_images(gateway: RunningGateway, client: AsyncOpenAI) -> None:
    first, second = png_bytes(24, 24, (1, 2, 3)), png_bytes(24, 24, (4, 5, 6))
    calls = record_calls(gateway.state.providers["demo"])
    raw = await client.images.with_raw_response.edit(
        image=[("a.png", first, "image/png"), ("b.png", second, "application/octet-stream")],
        prompt=PROMPT, model="demo-image", size="64x64", response_format="b64_json")
    result = raw.parse()
    assert result.data is not None and result.data[0].b64_json
    job = await gateway.state.store.get_job(raw.headers["x-muxproxy-job-id"])
    assert job is not None
    assert all(ref.blob is not None for ref in job.request.images)
    assert [ref.data for ref in calls[0].images] == [first, second]


async def test_edit_json_form_with_image_urls(gateway: RunningGateway,
                                              client: AsyncOpenAI) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    async with ImageServer() as images:
        result = await client.post("/images/edits", cast_to=ImagesResponse, body={
            "model": "demo-image", "prompt": PROMPT, "size": "64x64",
            "images": [{"image_url": images.url()}, {"image_url": data_uri}],
            "mask": {"image_url": data_uri}, "response_format": "url"})
    assert images.paths == ["/image.png"]
    assert result.data is not None and result.data[0].url
    key = await gateway.state.store.key_by_hash(hash_key(KEY_A))
    assert key is not None
    [job] = await gateway.state.store.list_jobs(key.id)
    assert [(ref.url, ref.content_type) for ref in job.request.images] == [
        (images.url(), None), (None, "image/png")]
    assert job.request.mask is not None and job.request.mask.blob is not None
    assert "base64" not in orjson.dumps(job.client_params).decode()


async def test_models_list_and_retrieve(gateway: RunningGateway, client: AsyncOpenAI) -> None:
    models = [m async for m in client.models.list()]
    assert [m.id for m in models] == list(gateway.settings.models)
    assert all(m.object == "model" and m.owned_by == "muxproxy" for m in models)
    model = await client.models.retrieve("grok-image/grok-4.2-image")
    assert model.id == "grok-image/grok-4.2-image"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("dall-e-9")
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert set(as_dict(caught.value.body)) == ERROR_KEYS


def as_dict(body: object) -> dict[str, Any]:
    assert isinstance(body, dict)
    return body


async def test_wrong_key_is_an_authentication_error(gateway: RunningGateway) -> None:
    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="not-a-key-at-all",
                           max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.images.generate(model="demo-image", prompt=PROMPT)
    assert caught.value.status_code == 401
    assert as_dict(caught.value.body) == {"message": "invalid API key",
                                          "type": "authentication_error", "param": None,
                                          "code": "invalid_api_key"}


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"model": "imagen-9"}, "model"),
    ({"prompt": ""}, "prompt"),
    ({"n": 0}, "n"),
    ({"size": "13x13"}, "size"),
    ({"quality": "ultra"}, "quality"),
    ({"response_format": "bmp"}, "response_format"),
    ({"style": "loud"}, "style"),
    ({"background": "glass"}, "background"),
    ({"output_format": "tiff"}, "output_format"),
    ({"output_compression": 101}, "output_compression"),
    ({"stream": "yes"}, "stream"),
    ({"partial_images": 4}, "partial_images"),
    ({"seed": -1}, "seed"),
    ({"aspect_ratio": "9:1"}, "aspect_ratio"),
    ({"resolution": "8k"}, "resolution"),
]


async def test_invalid_requests_name_the_field(client: AsyncOpenAI) -> None:
    for body, param in INVALID:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.post("/images/generations", cast_to=ImagesResponse,
                              body={"model": "demo-image", "prompt": PROMPT, **body})
        assert caught.value.param == param, body
        error = as_dict(caught.value.body)
        assert set(error) == ERROR_KEYS and error["type"] == "invalid_request_error"


async def test_edit_refuses_files_that_are_not_images(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.edit(image=("cat.png", b"just some text", "image/png"),
                                 prompt=PROMPT, model="demo-image")
    assert caught.value.param == "image"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post("/images/edits", cast_to=ImagesResponse,
                          body={"model": "demo-image", "prompt": PROMPT})
    assert caught.value.param == "image"


def noise_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="PNG")
    return out.getvalue()


async def test_too_large_is_413(gateway: RunningGateway, client: AsyncOpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await client.images.generate(model="demo-image", prompt="x" * 400_000)
    assert caught.value.status_code == 413
    assert as_dict(caught.value.body)["code"] == "payload_too_large"

    big = noise_png(180)
    assert 60_000 < len(big) < 300_000
    with pytest.raises(openai.APIStatusError) as caught:
        await client.images.edit(image=("big.png", big, "image/png"), prompt=PROMPT,
                                 model="demo-image")
    assert caught.value.status_code == 413
    assert as_dict(caught.value.body)["param"] == "image"


async def test_upstream_failure_is_502_and_not_retried(gateway: RunningGateway) -> None:
    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=KEY_A,
                           max_retries=2) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.images.generate(model="demo-broken", prompt=PROMPT)
    response = caught.value.response
    assert caught.value.status_code == 502
    assert response.headers["x-should-retry"] == "false"
    error = as_dict(caught.value.body)
    assert error == {"message": "demo failure (configured failure_rate)",
                     "type": "upstream_error", "param": None, "code": "demo_failure"}
    key = await gateway.state.store.key_by_hash(hash_key(KEY_A))
    assert key is not None
    [job] = await gateway.state.store.list_jobs(key.id)
    assert job.id == response.headers["x-muxproxy-job-id"]
    task = await gateway.task(job.id)
    assert task["state"] == "failed" and task["failMsg"] == error["message"]


async def test_wait_timeout_is_504_naming_the_job(tmp_path: Path) -> None:
    config = merge(base_config(tmp_path), {
        "surfaces": {"openai_wait_seconds": 0.2},
        "providers": {"demo-slow": {"kind": "demo", "options": {"delay_seconds": 0.6}}},
        "models": {"slow": {"routes": [{"provider": "demo-slow", "model": "slow"}]}},
    })
    async with run_gateway(config) as gateway, AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=KEY_A, max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.images.generate(model="slow", prompt=PROMPT, size="64x64")
        assert caught.value.status_code == 504
        job_id = caught.value.response.headers["x-muxproxy-job-id"]
        assert job_id in caught.value.message
        assert as_dict(caught.value.body)["code"] == "timeout"
        # The job was not abandoned: it finishes and the task API has it.
        task = await gateway.wait_terminal(job_id)
        assert task["state"] == "completed"


async def test_client_disconnect_leaves_the_job_running(tmp_path: Path) -> None:
    config = merge(base_config(tmp_path), {
        "providers": {"demo-slow": {"kind": "demo", "options": {"delay_seconds": 0.5}}},
        "models": {"slow": {"routes": [{"provider": "demo-slow", "model": "slow"}]}},
    })
    async with run_gateway(config) as gateway:
        key = await gateway.state.store.key_by_hash(hash_key(KEY_A))
        assert key is not None
        async with aiohttp.ClientSession() as impatient:
            request = asyncio.create_task(impatient.post(
                f"{gateway.url}/v1/images/generations", headers=gateway.headers(),
                json={"model": "slow", "prompt": PROMPT, "size": "64x64"}))
            jobs = await eventually(lambda: gateway.state.store.list_jobs(key.id))
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
        task = await gateway.wait_terminal(jobs[0].id)
        assert task["state"] == "completed" and len(task["resultUrls"]) == 1
        # The waiting request noticed the hang-up and ended (logged as 499).
        await eventually(lambda: aborted_requests(gateway))


async def aborted_requests(gateway: RunningGateway) -> list[str]:
    async with gateway.http.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    return [line for line in text.splitlines()
            if 'route="/v1/images/generations"' in line and 'status="499"' in line]


async def eventually(check: Callable[[], Awaitable[list[T]]]) -> list[T]:
    """Poll ``check`` until it returns a non-empty list (5 s at most)."""
    async with asyncio.timeout(5):
        while True:
            if found := await check():
                return found
            await asyncio.sleep(0.01)


async def test_unknown_routes_and_methods_answer_in_openai_shape(
        gateway: RunningGateway) -> None:
    for method, path, status in [("GET", "/v1/images/generations", 405),
                                 ("POST", "/v1/chat/completions", 404)]:
        async with gateway.http.request(method, gateway.url + path,
                                        headers=gateway.headers()) as resp:
            assert resp.status == status
            body = await resp.json()
        assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS


async def test_another_keys_job_is_not_found_natively(gateway: RunningGateway,
                                                      client: AsyncOpenAI) -> None:
    raw = await client.images.with_raw_response.generate(model="demo-image", prompt=PROMPT,
                                                         size="64x64")
    async with gateway.http.get(f"{gateway.url}/api/v1/images/generations",
                                params={"task_id": raw.headers["x-muxproxy-job-id"]},
                                headers=gateway.headers(KEY_B)) as resp:
        assert resp.status == 404


# The renderer's shape for every status the surface can answer.

@pytest.mark.parametrize(("error", "status", "code"), [
    (InsufficientCredits("not enough credits: 40 needed, 12 left"), 402,
     "insufficient_credits"),
    (RateLimited("too many requests", retry_after=2.5), 429, "rate_limit_exceeded"),
    (UnsupportedMediaType("not an image", param="image"), 400, "unsupported_media_type"),
])
def test_renderer_shapes(error: MuxError, status: int, code: str) -> None:
    response = surface.render_error(error)
    assert response.status_code == status
    body = orjson.loads(bytes(response.body))
    assert body == {"error": {"message": error.message, "type": error.type,
                              "param": error.param, "code": code}}
    assert response.headers.get("retry-after") == ("3" if status == 429 else None)


async def test_sdk_sees_real_402_and_429(config: dict[str, Any]) -> None:
    """A key short of credits, then one over its rate: the SDK's own classes."""
    poor, hasty = "poor-key-000000001", "hasty-key-00000001"
    limited = {**config, "keys": [*config["keys"], {"name": "poor", "key": poor, "credits": 1},
                                  {"name": "hasty", "key": hasty, "unlimited": True,
                                   "rpm": 1}]}
    async with run_gateway(limited) as gw:
        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=poor, max_retries=0) as c:
            with pytest.raises(openai.APIStatusError) as short:
                await c.images.generate(model="gpt-image-2", prompt=PROMPT, quality="high")
        assert short.value.status_code == 402
        assert as_dict(short.value.body)["code"] == "insufficient_credits"
        assert "costs 18" in as_dict(short.value.body)["message"]
        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=hasty, max_retries=0) as c:
            await c.images.generate(model="demo-image", prompt=PROMPT, size="256x256")
            with pytest.raises(openai.RateLimitError) as fast:
                await c.images.generate(model="demo-image", prompt=PROMPT)
        assert fast.value.status_code == 429
        assert int(fast.value.response.headers["retry-after"]) >= 1
        assert sum((await gw.state.store.count_jobs()).values()) == 1
