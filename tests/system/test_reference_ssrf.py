"""SSRF: reference images named by URL reach public addresses only, checked at
submit (400) and again on every address the gateway dials, redirects included.
Every test asserts that nothing reached the upstream. No traffic leaves loopback."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pytest_aiohttp import AiohttpServer

from muxproxy.auth import hash_key
from muxproxy.faults import BadReference
from muxproxy.references import ReferenceFetcher
from muxproxy.settings import LimitSettings
from muxproxy.webhooks.ssrf import host_address
from tests.fakes.scripted import serve
from tests.fakes.task import FakeTask
from tests.support.gateway import KEY_A, RunningGateway, base_config, merge, run_gateway
from tests.support.images import png_bytes
from tests.support.references import ImageServer, allow
from tests.support.webhooks import StaticResolver

MODEL = "gemini-3-pro-image"
PNG_URI = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
# Every form of a refused host, as a client may write it in a URL.
REFUSED_HOSTS = {
    "loopback": "127.0.0.1",
    "private": "10.1.2.3",
    "link-local": "169.254.10.20",
    "metadata": "169.254.169.254",
    "ipv4-mapped-ipv6": "[::ffff:127.0.0.1]",
    "ipv6-loopback": "[::1]",
    "decimal": "2130706433",
    "octal": "0177.0.0.1",
    "short": "127.1",
    "hex": "0x7f.0.0.1",
    "name-to-loopback": "images.internal.test",
}
RESOLVER_NAMES = {"images.internal.test": ["127.0.0.1"]}


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> FakeTask:
    fake = FakeTask()
    await serve(fake, aiohttp_server)
    return fake


def config_for(tmp_path: Path, upstream: FakeTask, **extra: Any) -> dict[str, Any]:
    return merge(base_config(tmp_path), {
        "providers": {"apimodels": {"kind": "task", "base_url": upstream.url,
                                    "api_key": upstream.key, "timeout_seconds": 5}},
        "models": {MODEL: {"routes": [{"provider": "apimodels", "model": MODEL}]}},
        **extra,
    })


@pytest.fixture
async def target() -> AsyncIterator[ImageServer]:
    """What an attacker aims at: a service on the gateway's own loopback."""
    async with ImageServer("127.0.0.1") as server:
        yield server


def submissions(url: str) -> list[tuple[str, dict[str, Any]]]:
    """Every field that makes the gateway download, on each surface."""
    return [
        ("/api/v1/images/generations", {"model": MODEL, "prompt": "p", "image_url": url}),
        ("/api/v1/images/generations", {"model": MODEL, "prompt": "p", "image_urls": [url]}),
        ("/api/v1/images/generations", {"model": MODEL, "prompt": "p", "image": url}),
        ("/api/v1/images/generations", {"model": MODEL, "prompt": "p",
                                        "image_base64": PNG_URI, "mask": url}),
        ("/v1/images/edits", {"model": MODEL, "prompt": "p", "images": [{"image_url": url}]}),
        ("/v1/images/edits", {"model": MODEL, "prompt": "p",
                              "images": [{"image_url": PNG_URI}], "mask": {"image_url": url}}),
    ]


def assert_discreet(message: str, *secrets: str) -> None:
    """A refusal names the reference, never an internal address or port."""
    for secret in ("127.0.0.1", "::1", "10.1.2.3", "169.254", *secrets):
        assert secret not in message, message


async def job_count(gateway: RunningGateway) -> int:
    key = await gateway.state.store.key_by_hash(hash_key(KEY_A))
    assert key is not None
    return len(await gateway.state.store.list_jobs(key.id))


@pytest.mark.parametrize("host", REFUSED_HOSTS.values(), ids=REFUSED_HOSTS.keys())
async def test_refused_reference_hosts_are_a_400_at_submit(
        tmp_path: Path, upstream: FakeTask, target: ImageServer, host: str) -> None:
    url = f"http://{host}:{target.port}/image.png"
    resolver = StaticResolver({k: list(v) for k, v in RESOLVER_NAMES.items()})
    async with run_gateway(config_for(tmp_path, upstream), resolver=resolver) as gateway:
        for path, body in submissions(url):
            async with gateway.http.post(f"{gateway.url}{path}", json=body,
                                         headers=gateway.headers()) as resp:
                answer = await resp.json()
                assert resp.status == 400, (path, body, answer)
            message = answer["msg"] if "msg" in answer else answer["error"]["message"]
            assert "must reach a public address" in message, answer
            assert_discreet(message, str(target.port))
        assert await job_count(gateway) == 0
    assert target.paths == []
    assert upstream.counts == {} and upstream.bodies == []


@pytest.mark.parametrize("host", REFUSED_HOSTS.values(), ids=REFUSED_HOSTS.keys())
async def test_the_fetch_refuses_them_on_its_own(target: ImageServer, host: str) -> None:
    """Without the submit check (a job stored before it, a name that changed since),
    the download itself refuses before dialling."""
    fetcher = ReferenceFetcher(LimitSettings(), StaticResolver(
        {k: list(v) for k, v in RESOLVER_NAMES.items()}))
    try:
        with pytest.raises(BadReference) as caught:
            await fetcher.fetch(f"http://{host}:{target.port}/image.png", "reference image 1",
                                fetcher.budget())
    finally:
        await fetcher.aclose()
    assert caught.value.message == "reference image 1 must reach a public address"
    assert target.paths == []


def test_numeric_host_forms_are_read_as_addresses() -> None:
    assert str(host_address("2130706433")) == "127.0.0.1"
    assert str(host_address("0177.0.0.1")) == "127.0.0.1"
    assert str(host_address("127.1")) == "127.0.0.1"
    assert str(host_address("0x7f.0.0.1")) == "127.0.0.1"
    assert str(host_address("10.0x10203")) == "10.1.2.3"
    assert str(host_address("127.0.0.1.")) == "127.0.0.1"
    assert host_address("example.com") is None
    assert host_address("1e100.net") is None
    for bad in ("1.2.3.4.5", "256.1.1.1", "08.1.1.1", "4294967296"):
        with pytest.raises(ValueError, match="not an address"):
            host_address(bad)


async def failed_job(gateway: RunningGateway, body: dict[str, Any]) -> dict[str, Any]:
    task = await gateway.wait_terminal(await gateway.submit(body))
    assert (task["state"], task["failCode"]) == ("failed", "invalid_reference"), task
    return task


async def test_a_redirect_to_loopback_fails_the_job(
        tmp_path: Path, upstream: FakeTask, target: ImageServer) -> None:
    async with ImageServer("127.0.0.2") as allowed:
        hop = allowed.url(f"/redirect?to={quote(target.url(), safe='')}")
        config = config_for(tmp_path, upstream, **allow("127.0.0.2/32"))
        async with run_gateway(config) as gateway:
            task = await failed_job(gateway, {"model": MODEL, "prompt": "p", "image_url": hop})
    assert task["failMsg"] == "reference image 1 must reach a public address"
    assert_discreet(task["failMsg"], str(target.port), str(allowed.port))
    assert [p.split("?")[0] for p in allowed.paths] == ["/redirect"]
    assert target.paths == []
    assert upstream.counts == {}


async def test_a_name_rebound_after_submit_is_refused_at_connect(
        tmp_path: Path, upstream: FakeTask, target: ImageServer) -> None:
    # Allowed (127.0.0.2) when the submit looks, loopback when the download dials.
    resolver = StaticResolver({"rebind.test": ["127.0.0.2", "127.0.0.1"]})
    config = config_for(tmp_path, upstream, **allow("127.0.0.2/32"))
    async with run_gateway(config, resolver=resolver) as gateway:
        task = await failed_job(gateway, {"model": MODEL, "prompt": "p",
                                          "image_url": target.url(host="rebind.test")})
    assert task["failMsg"] == "reference image 1 must reach a public address"
    assert resolver.lookups == ["rebind.test", "rebind.test"]
    assert target.paths == []
    assert upstream.counts == {}


@pytest.mark.parametrize(("path", "message"), [
    ("/loop", "reference image 1 could not be fetched: more than 5 redirects"),
    (f"/redirect?to={quote('file:///etc/passwd', safe='')}",
     "reference image 1 leads to a URL that is not http(s)"),
    ("/missing.png", "reference image 1 could not be fetched: HTTP 404"),
    (f"/redirect?to={quote('http://[::1/x', safe='')}",
     "reference image 1 leads to an invalid URL"),
])
async def test_redirect_limits_and_failed_downloads(
        tmp_path: Path, upstream: FakeTask, path: str, message: str) -> None:
    async with ImageServer("127.0.0.2") as allowed:
        config = config_for(tmp_path, upstream, **allow("127.0.0.2/32"))
        async with run_gateway(config) as gateway:
            task = await failed_job(gateway, {"model": MODEL, "prompt": "p",
                                              "image_url": allowed.url(path)})
    assert task["failMsg"] == message
    if path == "/loop":
        assert len(allowed.paths) == 6  # the first request and five redirects
    assert upstream.counts == {}


async def test_an_image_over_the_limit_is_cut_off_while_read(
        tmp_path: Path, upstream: FakeTask) -> None:
    async with ImageServer("127.0.0.2") as allowed:
        config = config_for(tmp_path, upstream, **merge(
            allow("127.0.0.2/32"), {"limits": {"max_image_bytes": 1024 * 1024}}))
        async with run_gateway(config) as gateway:
            task = await failed_job(gateway, {"model": MODEL, "prompt": "p",
                                              "image_url": allowed.url("/big?mb=256")})
            async with asyncio.timeout(10):
                await allowed.big_done.wait()
    assert task["failMsg"] == "reference image 1 is larger than 1048576 bytes"
    # The gateway hung up after ~1 MiB: what the server got out is that plus what
    # the sockets' buffers took, far from the 256 MiB it meant to send.
    assert allowed.big_sent < 32 * 1024 * 1024, allowed.big_sent
    assert upstream.counts == {}


async def test_a_jobs_references_together_are_bounded(
        tmp_path: Path, upstream: FakeTask) -> None:
    async with ImageServer("127.0.0.2") as allowed:
        size = len(allowed.image)
        config = config_for(tmp_path, upstream, **merge(
            allow("127.0.0.2/32"), {"limits": {"max_reference_total_bytes": size * 3 // 2}}))
        async with run_gateway(config) as gateway:
            task = await failed_job(gateway, {"model": MODEL, "prompt": "p",
                                              "image_urls": [allowed.url(), allowed.url()]})
    assert task["failMsg"] == (f"the reference images together are larger than "
                               f"{size * 3 // 2} bytes")
    assert upstream.counts == {}


async def test_an_allowed_reference_is_fetched_before_the_upstream_call(
        tmp_path: Path, upstream: FakeTask) -> None:
    async with ImageServer("127.0.0.2") as allowed:
        config = config_for(tmp_path, upstream, **allow("127.0.0.2/32"))
        async with run_gateway(config) as gateway:
            task = await gateway.wait_terminal(await gateway.submit(
                {"model": MODEL, "prompt": "p", "image_url": allowed.url()}))
    assert task["state"] == "completed", task
    assert allowed.paths == ["/image.png"]
    assert upstream.bodies[0]["image_url"] == allowed.url()


async def test_the_openai_surface_answers_a_failed_reference_with_400(
        tmp_path: Path, upstream: FakeTask) -> None:
    async with ImageServer("127.0.0.2") as allowed:
        config = config_for(tmp_path, upstream, **allow("127.0.0.2/32"))
        async with run_gateway(config) as gateway, gateway.http.post(
                f"{gateway.url}/v1/images/edits", headers=gateway.headers(),
                json={"model": MODEL, "prompt": "p",
                      "images": [{"image_url": allowed.url("/missing.png")}]}) as resp:
            body = await resp.json()
            assert resp.status == 400, body
    assert body["error"]["code"] == "invalid_reference"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == "reference image 1 could not be fetched: HTTP 404"
    assert upstream.counts == {}
