"""A failed write to the gateway's own disk fails the job as ``storage_error``: no
further upstream call, the provider's circuit untouched, and a metric counts it.

The fault is real: a regular file stands where the storage's ``results`` folder
must be made, so the local backend's mkdir fails with ENOTDIR (tests run as root,
where a read-only mode would not stop a write)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from muxproxy.auth import hash_key
from tests.fakes.scripted import serve
from tests.fakes.task import FakeTask
from tests.support.gateway import KEY_A, RunningGateway, base_config, merge, run_gateway
from tests.support.images import png_bytes

SYNC, ASYNC = "gpt-image-2-lite", "gemini-3-pro-image"


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> FakeTask:
    fake = FakeTask()
    await serve(fake, aiohttp_server)
    return fake


def config_for(tmp_path: Path, upstream: FakeTask) -> dict[str, Any]:
    return merge(base_config(tmp_path), {
        "providers": {"apimodels": {"kind": "task", "base_url": upstream.url,
                                    "api_key": upstream.key, "timeout_seconds": 5,
                                    "circuit_threshold": 1}},
        "models": {m: {"routes": [{"provider": "apimodels", "model": m}]}
                   for m in (SYNC, ASYNC)},
    })


def break_results_folder(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "results").write_bytes(b"not a folder")


def storage_errors(gateway: RunningGateway, operation: str = "write") -> float:
    value = gateway.state.metrics.registry.get_sample_value(
        "muxproxy_storage_errors_total", {"operation": operation})
    return value or 0.0


async def test_a_failed_result_write_fails_the_job_as_storage_error(
        tmp_path: Path, upstream: FakeTask) -> None:
    break_results_folder(tmp_path)
    async with run_gateway(config_for(tmp_path, upstream)) as gateway:
        tasks = [await gateway.wait_terminal(await gateway.submit(
            {"model": SYNC, "prompt": f"job {i}"})) for i in range(2)]
        breaker = gateway.state.breakers["apimodels"]
        assert (breaker.state.value, breaker.failures) == ("closed", 0)
        assert storage_errors(gateway) == 2
        async with gateway.http.get(f"{gateway.url}/metrics") as resp:
            assert 'muxproxy_storage_errors_total{operation="write"} 2.0' in await resp.text()
    for task in tasks:
        assert (task["state"], task["failCode"]) == ("failed", "storage_error"), task
        assert task["failMsg"] == "the gateway could not store the result image"
        assert str(tmp_path) not in task["failMsg"]
    # Each job: one submit, its image fetched once, then nothing more. With a
    # threshold of 1, the second job reaching the upstream shows the circuit closed.
    assert (upstream.counts["submit"], upstream.counts["file"]) == (2, 2)
    assert set(upstream.counts) == {"submit", "file"}


async def test_a_failed_write_after_polling_stops_polling(
        tmp_path: Path, upstream: FakeTask) -> None:
    break_results_folder(tmp_path)
    async with run_gateway(config_for(tmp_path, upstream)) as gateway:
        task = await gateway.wait_terminal(await gateway.submit({"model": ASYNC, "prompt": "p"}))
        await gateway.state.scheduler.wait_idle()
        polls = upstream.counts["poll"]
        assert storage_errors(gateway) == 1
    assert (task["state"], task["failCode"]) == ("failed", "storage_error"), task
    [upstream_task] = upstream.tasks.values()
    assert upstream_task["state"] == "completed"
    assert (upstream.counts["submit"], upstream.counts["file"]) == (1, 1)
    assert upstream.counts["poll"] == polls == upstream_task["polls"]


async def test_a_failed_upload_write_at_submit_is_a_503_and_no_job(
        tmp_path: Path, upstream: FakeTask) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "inputs").write_bytes(b"not a folder")
    upload = base64.b64encode(png_bytes(16, 16)).decode()
    async with run_gateway(config_for(tmp_path, upstream)) as gateway:
        async with gateway.http.post(
                f"{gateway.url}/api/v1/images/generations", headers=gateway.headers(),
                json={"model": ASYNC, "prompt": "p", "image_base64": upload}) as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert resp.headers["Retry-After"] == "30"
        assert body == {"code": 503, "data": None, "msg": "the gateway could not store the "
                        "reference images; try again later"}
        assert storage_errors(gateway) == 1
        key = await gateway.state.store.key_by_hash(hash_key(KEY_A))
        assert key is not None
        assert await gateway.state.store.list_jobs(key.id) == []
    assert upstream.counts == {}
