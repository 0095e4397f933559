"""Upstream answers are read within bounds: a 200 MB body (streamed by the fake, never
held) costs the gateway at most ``max_response_bytes``, or 64 KiB for an error body."""

from __future__ import annotations

import time

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from muxproxy.clock import SystemClock
from muxproxy.generation import GenerationRequest
from muxproxy.providers.base import Call, UpstreamError
from muxproxy.providers.fal import FalProvider
from muxproxy.providers.openai_compatible import OpenAICompatibleProvider
from muxproxy.settings import ProviderSettings
from tests.fakes.chaos import CHAOS_KEY, HUGE_BYTES, ChaosUpstream, Fault


def call(model: str) -> Call:
    return Call(job_id="job-1", request=GenerationRequest(prompt="#huge a fox"),
                upstream_model=model, params={}, images=(), mask=None)


async def test_a_200_mb_answer_fails_the_call_for_good(http: aiohttp.ClientSession) -> None:
    async with ChaosUpstream(rate=1.0, weights={Fault.HUGE_BODY: 1}) as fake:
        provider = OpenAICompatibleProvider(ProviderSettings(
            name="up", kind="openai-compatible", base_url=f"{fake.url}/v1", api_key=CHAOS_KEY,
            max_response_bytes=1024 * 1024), http, SystemClock())
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            await provider.submit(call("chaos-image-1"))
    assert caught.value.code == "response_too_large"
    assert not caught.value.transient  # asking again would buy the same answer
    assert "larger than 1048576 bytes" in caught.value.message
    assert "providers.up.max_response_bytes" in caught.value.message
    assert time.monotonic() - started < 5  # stopped reading long before 200 MB


async def test_a_200_mb_error_page_is_not_read_to_its_end(
        http: aiohttp.ClientSession, aiohttp_server: AiohttpServer) -> None:
    sent = 0

    async def endless_500(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(status=500, headers={"Content-Type": "text/html"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"<p>" + b"x" * (1024 * 1024)
        try:
            while sent < HUGE_BYTES:
                await response.write(chunk)
                sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    app = web.Application()
    app.router.add_post("/{owner}/{alias}/{path:.+}", endless_500)
    server = await aiohttp_server(app)
    provider = FalProvider(ProviderSettings(name="fal", kind="fal",
                                            base_url=f"http://127.0.0.1:{server.port}",
                                            api_key="k"), http, SystemClock())
    with pytest.raises(UpstreamError) as caught:
        await provider.submit(call("fal-ai/flux/dev"))
    assert caught.value.status == 500 and caught.value.transient
    assert caught.value.message == "fal: HTTP 500"
    assert sent < HUGE_BYTES
