"""An unreachable bucket: a result write fails the job as ``storage_error`` (no
further upstream call, the provider's circuit untouched), a download answers 503
with Retry-After in the calling surface's shape, and both work again once the
bucket is back. The fault is real: the gateway reaches the S3 server through a
TCP relay that the test cuts (connections dropped, the port closed)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from muxproxy.auth import hash_key
from tests.fakes.scripted import serve
from tests.fakes.task import FakeTask
from tests.support.gateway import KEY_A, RunningGateway, base_config, merge, run_gateway
from tests.support.images import png_bytes
from tests.support.s3 import Bucket, TcpRelay, relay_to

MODEL, EDIT_MODEL = "gpt-image-2-lite", "gemini-3-pro-image"


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> FakeTask:
    fake = FakeTask()
    await serve(fake, aiohttp_server)
    return fake


@pytest.fixture
async def relay(s3_bucket: Bucket) -> AsyncIterator[TcpRelay]:
    async with relay_to(s3_bucket.endpoint) as running:
        yield running


@pytest.fixture
async def gateway(tmp_path: Path, upstream: FakeTask, s3_bucket: Bucket,
                  relay: TcpRelay) -> AsyncIterator[RunningGateway]:
    config: dict[str, Any] = merge(base_config(tmp_path), {
        "storage": s3_bucket.storage_config(endpoint=relay.url),
        "providers": {"apimodels": {"kind": "task", "base_url": upstream.url,
                                    "api_key": upstream.key, "timeout_seconds": 5,
                                    "circuit_threshold": 1}},
        "models": {m: {"routes": [{"provider": "apimodels", "model": m}]}
                   for m in (MODEL, EDIT_MODEL)},
    })
    async with run_gateway(config) as running:
        yield running


def storage_errors(gateway: RunningGateway, operation: str) -> float:
    value = gateway.state.metrics.registry.get_sample_value(
        "muxproxy_storage_errors_total", {"operation": operation})
    return value or 0.0


async def test_an_unreachable_bucket_fails_writes_as_storage_error(
        gateway: RunningGateway, relay: TcpRelay, upstream: FakeTask) -> None:
    await relay.cut()
    tasks = [await gateway.wait_terminal(await gateway.submit(
        {"model": MODEL, "prompt": f"job {i}"})) for i in range(2)]
    for task in tasks:
        assert (task["state"], task["failCode"]) == ("failed", "storage_error"), task
        assert task["failMsg"] == "the gateway could not store the result image"
    breaker = gateway.state.breakers["apimodels"]
    assert (breaker.state.value, breaker.failures) == ("closed", 0)
    assert storage_errors(gateway, "write") == 2
    # Each job: one submit, its image fetched once, and no retry. With a threshold of
    # 1, the second job reaching the upstream shows the circuit stayed closed.
    assert (upstream.counts["submit"], upstream.counts["file"]) == (2, 2)
    assert set(upstream.counts) == {"submit", "file"}
    async with gateway.http.get(f"{gateway.url}/readyz") as resp:
        assert resp.status == 503 and (await resp.json())["storage"] == "failing"
    # An upload at submit: 503 with Retry-After, and no job.
    upload = base64.b64encode(png_bytes(16, 16)).decode()
    async with gateway.http.post(
            f"{gateway.url}/api/v1/images/generations", headers=gateway.headers(),
            json={"model": EDIT_MODEL, "prompt": "p", "image_base64": upload}) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (503, "30")
        assert (await resp.json())["msg"] == ("the gateway could not store the reference "
                                              "images; try again later")
    key = await gateway.state.store.key_by_hash(hash_key(KEY_A))
    assert key is not None and len(await gateway.state.store.list_jobs(key.id)) == 2
    assert set(upstream.counts) == {"submit", "file"}

    await relay.restore()
    task = await gateway.wait_terminal(await gateway.submit({"model": MODEL, "prompt": "p"}))
    assert task["state"] == "completed", task


async def test_an_unreachable_bucket_answers_downloads_503_with_retry_after(
        gateway: RunningGateway, relay: TcpRelay) -> None:
    task_id = await gateway.submit({"model": MODEL, "prompt": "p"})
    link = (await gateway.wait_terminal(task_id))["resultUrls"][0]
    image = f"{gateway.url}/api/v1/generations/{task_id}/image"
    async with gateway.http.get(link) as resp:
        assert resp.status == 200
        whole = await resp.read()

    await relay.cut()
    for method in ("GET", "HEAD"):
        async with gateway.http.request(method, link) as resp:
            assert (resp.status, resp.headers["Retry-After"]) == (503, "30")
            if method == "GET":
                assert await resp.json() == {
                    "code": 503, "data": None,
                    "msg": "the gateway's image storage is unreachable; retry shortly"}
    async with gateway.http.get(image, headers=gateway.headers()) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (503, "30")
        assert await resp.json() == {
            "error": "the gateway's image storage is unreachable; retry shortly",
            "code": "storage_error"}
    assert storage_errors(gateway, "read") == 3

    await relay.restore()
    async with gateway.http.get(link) as resp:
        assert resp.status == 200 and await resp.read() == whole
