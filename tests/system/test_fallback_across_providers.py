"""A model with two real adapters: the first upstream keeps answering 503, the job
falls back to the second (a fal queue), and the task names who served it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_aiohttp import AiohttpServer

from tests.fakes.fal import FakeFal
from tests.fakes.openai import FakeOpenAI
from tests.fakes.scripted import serve as serve_fal
from tests.support.gateway import base_config, merge, run_gateway
from tests.support.provider_calls import serve as serve_openai


async def test_transient_upstream_falls_back_to_another_provider(
        tmp_path: Path, aiohttp_server: AiohttpServer) -> None:
    compat = await serve_openai(FakeOpenAI("mm-test-key-0001", compatible=True),
                                aiohttp_server)
    compat.fail(503, times=100, headers={"Retry-After": "0"})
    fal = FakeFal()
    await serve_fal(fal, aiohttp_server)
    config: dict[str, Any] = merge(base_config(tmp_path), {
        "providers": {
            "modelmax": {"kind": "openai-compatible", "base_url": compat.base_url,
                         "api_key": "mm-test-key-0001", "circuit_threshold": 100},
            "fal": {"kind": "fal", "base_url": fal.url, "api_key": fal.key},
        },
        "models": {"imagen-or-banana": {"routes": [
            {"provider": "modelmax", "model": "imagen-3"},
            {"provider": "fal", "model": "fal-ai/nano-banana"},
        ]}},
    })
    async with run_gateway(config) as gw:
        task_id = await gw.submit({"model": "imagen-or-banana", "prompt": "a red fox"})
        task = await gw.wait_terminal(task_id)
        assert task["state"] == "completed", task
        assert task["model"] == "fal/fal-ai/nano-banana"
        async with gw.http.get(task["resultUrls"][0]) as resp:
            assert resp.status == 200
            assert (await resp.read()).startswith(b"\x89PNG")
    # max_attempts (3) on the first upstream, then exactly one submit to the second.
    assert len(compat.calls("/v1/images/generations")) == 3
    assert len(fal.requests) == 1
