"""``stream: true`` on the OpenAI surface: server-sent events in OpenAI's shapes, read
by the real openai-python SDK (sync and async) and asserted raw on the wire."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from muxproxy.auth import hash_key
from muxproxy.store import Billing
from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import KEY_A, RunningGateway, base_config, merge, run_gateway
from tests.support.images import image_size, png_bytes
from tests.support.seed_models import seed_models

PROMPT = "a kite over the dunes"
PARTIAL_KEYS = {"type", "b64_json", "created_at", "partial_image_index", "size", "quality",
                "background", "output_format"}
COMPLETED_KEYS = PARTIAL_KEYS - {"partial_image_index"} | {"usage"}


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return merge(base_config(tmp_path), {
        "providers": {"demo-broken": {"kind": "demo", "options": {"failure_rate": 1.0}}},
        "models": {**seed_models(),
                   "demo-broken": {"routes": [{"provider": "demo-broken", "model": "x"}]}},
    })


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.base_url = str(server.make_url("/v1"))
    try:
        yield fake
    finally:
        if fake.stream_gate is not None:
            fake.stream_gate.set()
        await server.close()


def with_openai(config: dict[str, Any], fake: FakeOpenAI) -> dict[str, Any]:
    return merge(config, {
        "providers": {"openai": {"kind": "openai", "base_url": fake.base_url,
                                 "api_key": fake.key}},
        "models": {**config["models"],
                   "gpt-image-1": {"routes": [{"provider": "openai", "model": "gpt-image-1"}],
                                   "credits": 7}}})


async def raw_events(gateway: RunningGateway, path: str, **kwargs: Any
                     ) -> tuple[aiohttp.ClientResponse, list[tuple[str, dict[str, Any]]]]:
    """POST and read the whole answer as (event, data) pairs."""
    headers = {**gateway.headers(), **kwargs.pop("headers", {})}
    async with gateway.http.post(f"{gateway.url}{path}", headers=headers, **kwargs) as resp:
        text = await resp.text()
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return resp, events


async def test_demo_stream_sends_one_completed_event(gateway: RunningGateway) -> None:
    resp, events = await raw_events(gateway, "/v1/images/generations", json={
        "model": "nano-banana", "prompt": PROMPT, "size": "256x128", "stream": True,
        "partial_images": 2, "quality": "high"})
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    [(event, data)] = events
    assert event == data["type"] == "image_generation.completed"
    assert set(data) == COMPLETED_KEYS
    assert image_size(base64.b64decode(data["b64_json"])) == (256, 128)
    assert data["size"] == "256x128" and data["output_format"] == "png"
    assert data["quality"] == "high" and data["background"] == "auto"
    # Billing and the job record: as for a plain call.
    job = await gateway.state.store.get_job(resp.headers["x-muxproxy-job-id"])
    assert job is not None and job.surface == "openai" and job.billing == Billing.CHARGED
    assert data["usage"]["credits"] == job.credits == 5
    assert job.request.extra["partial_images"] == 2


async def test_sync_sdk_streams_generation_and_edit(gateway: RunningGateway) -> None:
    def use_sync_client() -> tuple[list[Any], list[Any]]:
        with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY_A,
                           max_retries=0) as client:
            generated = list(client.images.generate(
                model="demo-image", prompt=PROMPT, size="128x128", stream=True,
                partial_images=1))
            edited = list(client.images.edit(
                model="demo-image", prompt=PROMPT, image=("in.png", png_bytes(96, 64)),
                stream=True, partial_images=3))
        return generated, edited

    generated, edited = await asyncio.to_thread(use_sync_client)
    [done] = generated
    assert done.type == "image_generation.completed"
    assert image_size(base64.b64decode(done.b64_json)) == (128, 128)
    [edit_done] = edited
    assert edit_done.type == "image_edit.completed" and edit_done.usage.total_tokens == 0
    assert base64.b64decode(edit_done.b64_json).startswith(b"\x89PNG")


async def test_async_sdk_streams(gateway: RunningGateway) -> None:
    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=KEY_A,
                           max_retries=0) as client:
        stream = await client.images.generate(model="demo-image", prompt=PROMPT,
                                              size="64x64", stream=True, partial_images=0)
        events = [event async for event in stream]
    [done] = events
    assert done.type == "image_generation.completed" and done.size == "64x64"


async def test_failure_is_an_error_event_the_sdk_raises(gateway: RunningGateway) -> None:
    resp, events = await raw_events(gateway, "/v1/images/generations", json={
        "model": "demo-broken", "prompt": PROMPT, "stream": True})
    assert resp.status == 200
    assert events == [("error", {"error": {
        "message": "demo failure (configured failure_rate)", "type": "upstream_error",
        "param": None, "code": "demo_failure"}})]
    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=KEY_A,
                           max_retries=0) as client:
        stream = await client.images.generate(model="demo-broken", prompt=PROMPT,
                                              stream=True)
        with pytest.raises(openai.APIError, match="demo failure"):
            async for _ in stream:
                pass


async def test_refusal_before_the_job_is_a_plain_error(gateway: RunningGateway) -> None:
    for body, param in (({"partial_images": 4}, "partial_images"), ({"stream": "yes"}, "stream")):
        async with gateway.http.post(
                f"{gateway.url}/v1/images/generations", headers=gateway.headers(),
                json={"model": "demo-image", "prompt": PROMPT, "stream": True, **body}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == param


async def test_openai_upstream_partials_stream_through(config: dict[str, Any],
                                                       fake: FakeOpenAI) -> None:
    async with run_gateway(with_openai(config, fake)) as gateway, AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=KEY_A, max_retries=0) as client:
        stream = await client.images.generate(model="gpt-image-1", prompt=PROMPT,
                                              stream=True, partial_images=2)
        events = [event async for event in stream]
        assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
            "image_generation.completed"]
        assert [getattr(e, "partial_image_index", None) for e in events[:2]] == [0, 1]
        assert [base64.b64decode(e.b64_json) for e in events[:2]] == fake.partials
        assert base64.b64decode(events[2].b64_json) == fake.image
        [upstream] = fake.calls("/v1/images/generations")
        assert upstream.json["stream"] is True and upstream.json["partial_images"] == 2

        # Edits stream through as image_edit.* (multipart to the upstream too).
        fake.partials.clear()
        edit = await client.images.edit(model="gpt-image-1", prompt=PROMPT,
                                        image=("in.png", png_bytes(64, 64)), stream=True,
                                        partial_images=1)
        edited = [event async for event in edit]
        assert [e.type for e in edited] == ["image_edit.partial_image", "image_edit.completed"]
        assert base64.b64decode(edited[0].b64_json) == fake.partials[0]
        [upstream_edit] = fake.calls("/v1/images/edits")
        assert upstream_edit.fields["stream"] == ["true"]
        assert upstream_edit.fields["partial_images"] == ["1"]


async def test_upstream_error_mid_stream_arrives_as_error_event(config: dict[str, Any],
                                                                fake: FakeOpenAI) -> None:
    fake.stream_error = {"message": "Your request was rejected by the safety system.",
                         "type": "image_generation_user_error", "param": None,
                         "code": "moderation_blocked"}
    async with run_gateway(with_openai(config, fake)) as gateway:
        resp, events = await raw_events(gateway, "/v1/images/generations", json={
            "model": "gpt-image-1", "prompt": PROMPT, "stream": True, "partial_images": 1})
        assert [event for event, _ in events] == ["image_generation.partial_image", "error"]
        error = events[1][1]["error"]
        assert error["code"] == "moderation_blocked" and "safety system" in error["message"]
        job = await gateway.state.store.get_job(resp.headers["x-muxproxy-job-id"])
        # Refused by the upstream: failed and refunded, as for a plain call.
        assert job is not None and job.fail_code == "moderation_blocked"
        assert job.billing == Billing.REFUNDED


async def test_client_disconnect_leaves_the_job_running(config: dict[str, Any],
                                                        fake: FakeOpenAI) -> None:
    fake.stream_gate = asyncio.Event()
    async with run_gateway(with_openai(config, fake)) as gateway:
        async with aiohttp.ClientSession() as impatient, impatient.post(
                f"{gateway.url}/v1/images/generations", headers=gateway.headers(),
                json={"model": "gpt-image-1", "prompt": PROMPT, "stream": True,
                      "partial_images": 1}) as resp:
            job_id = resp.headers["x-muxproxy-job-id"]
            first = await resp.content.readuntil(b"\n\n")
            assert first.startswith(b"event: image_generation.partial_image\n")
        # The client is gone; the upstream now finishes.
        fake.stream_gate.set()
        task = await gateway.wait_terminal(job_id)
        assert task["state"] == "completed" and len(task["resultUrls"]) == 1


async def test_idempotent_retry_streams_the_same_job(gateway: RunningGateway) -> None:
    body = {"model": "demo-image", "prompt": PROMPT, "size": "64x64", "stream": True}
    headers = {"Idempotency-Key": "stream-once"}
    first, events = await raw_events(gateway, "/v1/images/generations", json=body,
                                     headers=headers)
    again, replayed = await raw_events(gateway, "/v1/images/generations", json=body,
                                       headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-muxproxy-job-id"] == first.headers["x-muxproxy-job-id"]
    assert [e for e, _ in replayed] == ["image_generation.completed"]
    assert replayed[0][1]["b64_json"] == events[0][1]["b64_json"]
    key = await gateway.state.store.key_by_hash(hash_key(KEY_A))
    assert key is not None and len(await gateway.state.store.list_jobs(key.id)) == 1


async def test_stream_false_is_a_plain_answer(gateway: RunningGateway) -> None:
    async with gateway.http.post(f"{gateway.url}/v1/images/generations",
                                 headers=gateway.headers(), json={
                                     "model": "demo-image", "prompt": PROMPT, "size": "64x64",
                                     "stream": False, "partial_images": 0}) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert "url" in (await resp.json())["data"][0]


async def test_wait_running_out_is_an_error_event_naming_the_job(tmp_path: Path) -> None:
    config = merge(base_config(tmp_path), {
        "surfaces": {"openai_wait_seconds": 0.2},
        "providers": {"demo-slow": {"kind": "demo", "options": {"delay_seconds": 0.6}}},
        "models": {"slow": {"routes": [{"provider": "demo-slow", "model": "slow"}]}},
    })
    async with run_gateway(config) as gateway:
        resp, events = await raw_events(gateway, "/v1/images/generations", json={
            "model": "slow", "prompt": PROMPT, "size": "64x64", "stream": True})
        job_id = resp.headers["x-muxproxy-job-id"]
        [(event, data)] = events
        assert event == "error" and data["error"]["code"] == "timeout"
        assert job_id in data["error"]["message"]
        task = await gateway.wait_terminal(job_id)
        assert task["state"] == "completed"


async def test_json_edit_streams_edit_events(gateway: RunningGateway) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(png_bytes(64, 32)).decode()
    resp, events = await raw_events(gateway, "/v1/images/edits", json={
        "model": "demo-image", "prompt": PROMPT, "images": [{"image_url": data_uri}],
        "stream": True, "partial_images": 1})
    assert resp.status == 200
    [(event, data)] = events
    assert event == data["type"] == "image_edit.completed" and set(data) == COMPLETED_KEYS
    # No size sent: the edit keeps its input's 2:1 shape (the nearest listed ratio).
    width, height = image_size(base64.b64decode(data["b64_json"]))
    assert data["size"] == f"{width}x{height}" and abs(width / height - 16 / 9) < 0.02
