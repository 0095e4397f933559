"""openai-python (the test extra's, the latest release) against a live gateway on
the demo provider, given only ``base_url`` and ``api_key``: generate, edit,
streaming, the async client, and errors raised as the SDK's own exceptions. The
sync client runs in a thread: the gateway shares this event loop."""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types import Image, ImagesResponse

from tests.clients.support import GPT_MODEL, OTHER_MODEL, matrix_config
from tests.support.gateway import KEY_A, RunningGateway, run_gateway
from tests.support.images import image_size, png_bytes


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with run_gateway(matrix_config(tmp_path)) as gateway:
        yield gateway


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - the gateway's link
        data: bytes = response.read()
    return data


def decoded(item: Any) -> bytes:
    return base64.b64decode(item.b64_json)


def items(response: ImagesResponse) -> list[Image]:
    assert response.data is not None
    return response.data


async def test_sync_client_generates_and_edits(live: RunningGateway) -> None:
    def use() -> dict[str, Any]:
        client = OpenAI(base_url=f"{live.url}/v1", api_key=KEY_A)
        plain = client.images.generate(model=OTHER_MODEL, prompt="a red fox", n=2)
        gpt = client.images.generate(model=GPT_MODEL, prompt="a red fox", size="1536x1024")
        edit = client.images.edit(model=GPT_MODEL, prompt="as a watercolor",
                                  image=[("a.png", png_bytes(64, 64), "image/png"),
                                         ("b.png", png_bytes(64, 64), "image/png")])
        return {"plain": plain, "gpt": gpt, "edit": edit,
                "plain_images": [fetch(item.url or "") for item in items(plain)]}

    out = await asyncio.to_thread(use)
    assert abs(out["plain"].created - time.time()) < 600
    # Not GPT Image: links by default; GPT Image: b64_json by default, as OpenAI does.
    assert [item.b64_json for item in items(out["plain"])] == [None, None]
    assert [image_size(data) for data in out["plain_images"]] == [(1024, 1024)] * 2
    [gpt] = items(out["gpt"])
    assert gpt.url is None and image_size(decoded(gpt)) == (1536, 1024)
    [edited] = items(out["edit"])
    assert edited.url is None and decoded(edited).startswith(b"\x89PNG")


async def test_sync_client_streams(live: RunningGateway) -> None:
    def use() -> tuple[list[Any], list[Any]]:
        client = OpenAI(base_url=f"{live.url}/v1", api_key=KEY_A)
        generated = list(client.images.generate(model=GPT_MODEL, prompt="a fox", stream=True,
                                                partial_images=2))
        edited = list(client.images.edit(model=GPT_MODEL, prompt="at night", stream=True,
                                         image=("a.png", png_bytes(), "image/png"),
                                         partial_images=1))
        return generated, edited

    generated, edited = await asyncio.to_thread(use)
    for events, kind in ((generated, "image_generation"), (edited, "image_edit")):
        *partials, final = events
        assert all(e.type == f"{kind}.partial_image" for e in partials)
        assert final.type == f"{kind}.completed"
        assert image_size(base64.b64decode(final.b64_json)) == (1024, 1024)
        assert final.usage is not None and final.usage.total_tokens >= 0


async def test_async_client_generates_edits_and_streams(live: RunningGateway) -> None:
    async with AsyncOpenAI(base_url=f"{live.url}/v1", api_key=KEY_A) as client:
        generated, edited = await asyncio.gather(
            client.images.generate(model=GPT_MODEL, prompt="a fox", quality="low"),
            client.images.edit(model=OTHER_MODEL, prompt="a fox, edited",
                               image=("fox.png", png_bytes(64, 64), "image/png")))
        stream = await client.images.generate(model=OTHER_MODEL, prompt="a fox", stream=True)
        events = [event async for event in stream]
    assert image_size(decoded(items(generated)[0])) == (1024, 1024)
    # Edits answer b64_json on every model.
    assert decoded(items(edited)[0]).startswith(b"\x89PNG")
    assert [e.type for e in events] == ["image_generation.completed"]


async def test_errors_are_the_sdks_exceptions(live: RunningGateway) -> None:
    async with AsyncOpenAI(base_url=f"{live.url}/v1", api_key=KEY_A, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as unknown:
            await client.images.generate(model="no-such-model", prompt="x")
        with pytest.raises(openai.BadRequestError) as bad_size:
            await client.images.generate(model=GPT_MODEL, prompt="x", size="3x3")
        with pytest.raises(openai.BadRequestError) as in_stream:
            await client.images.generate(model=GPT_MODEL, prompt="", stream=True)
    assert unknown.value.status_code == 400 and unknown.value.param == "model"
    assert bad_size.value.param == "size"
    assert in_stream.value.param == "prompt"
    async with AsyncOpenAI(base_url=f"{live.url}/v1", api_key="not-a-key",
                           max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.images.generate(model=GPT_MODEL, prompt="x")
    assert denied.value.status_code == 401
