"""The ModelMux-style generations API over real HTTP with the demo provider."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from muxproxy.errors import MuxError, RateLimited
from muxproxy.surfaces import modelmux
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, base_config, merge, run_gateway
from tests.support.images import image_size, png_bytes
from tests.support.seed_models import seed_models

PROMPT = "a red fox in fresh snow, golden hour"


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return merge(base_config(tmp_path), {
        "limits": {"max_image_bytes": 50_000, "max_reference_images": 3},
        "providers": {
            "demo-slow": {"kind": "demo", "options": {"delay_seconds": 0.4}},
            "demo-broken": {"kind": "demo", "options": {"failure_rate": 1.0}},
        },
        "models": {**seed_models(),
                   "slow": {"routes": [{"provider": "demo-slow", "model": "slow"}]},
                   "broken": {"routes": [{"provider": "demo-broken", "model": "broken"}]}},
    })


async def call(gateway: RunningGateway, method: str, path: str, *, key: str | None = KEY_A,
               headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, Any]:
    headers = {**(gateway.headers(key) if key else {}), **(headers or {})}
    async with gateway.http.request(method, gateway.url + path, headers=headers,
                                    **kwargs) as resp:
        return resp.status, await resp.json()


async def create(gateway: RunningGateway, body: dict[str, Any]) -> dict[str, Any]:
    status, data = await call(gateway, "POST", "/api/v1/generations", json=body)
    assert status == 200, data
    result: dict[str, Any] = data
    return result


async def wait_done(gateway: RunningGateway, history_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            status, data = await call(gateway, "GET", f"/api/v1/generations/{history_id}")
            assert status == 200, data
            if data["status"] in ("completed", "failed"):
                result: dict[str, Any] = data
                return result
            await asyncio.sleep(0.01)


def form(fields: dict[str, str], files: list[tuple[str, str, bytes, str]]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields.items():
        data.add_field(name, value)
    for name, filename, content, content_type in files:
        data.add_field(name, content, filename=filename, content_type=content_type)
    return data


async def test_json_generation_flow(gateway: RunningGateway) -> None:
    created = await create(gateway, {"prompt": PROMPT, "model": "nano-banana-pro",
                                     "resolution": "1k", "aspectRatio": "16:9"})
    history_id = created.pop("historyId")
    assert created.pop("createdAt") > 1_600_000_000_000
    assert created == {"status": "pending", "model": "nano-banana-pro", "aspectRatio": "16:9",
                       "resolution": "1k", "creditsCharged": 10, "provider": "demo"}

    done = await wait_done(gateway, history_id)
    assert done["status"] == "completed" and done["creditsUsed"] == 10
    assert done["completedAt"] >= done["createdAt"]
    assert {k: done[k] for k in ("provider", "model", "resolution", "aspectRatio")} == {
        "provider": "demo", "model": "nano-banana-pro", "resolution": "1k",
        "aspectRatio": "16:9"}
    assert "errorMessage" not in done

    async with gateway.http.get(f"{gateway.url}/api/v1/generations/{history_id}/image",
                                headers={"x-api-key": KEY_A}) as resp:
        assert resp.status == 200 and resp.headers["content-type"] == "image/png"
        streamed = await resp.read()
    assert image_size(streamed) == (1360, 768)
    async with gateway.http.get(done["outputUrl"]) as resp:
        assert await resp.read() == streamed

    # The same job, through the native task API.
    task = await gateway.task(history_id)
    assert task["state"] == "completed" and task["completeTime"] == done["completedAt"]
    async with gateway.http.get(task["resultUrls"][0]) as resp:
        assert await resp.read() == streamed


async def test_prices_follow_the_seed_table(gateway: RunningGateway) -> None:
    cases = [({"model": "nano-banana"}, 5, "1k"),
             ({"model": "nano-banana-2", "resolution": "4K"}, 5, "4k"),
             # Quality left to the upstream is billed at the dearest tier it may use.
             ({"model": "gpt-image-2"}, 18, "1k"),
             ({"model": "gpt-image-2", "quality": "low"}, 2, "1k"),
             ({"model": "gpt-image-2", "resolution": "2k", "quality": "high"}, 40, "2k"),
             ({"model": "gpt-image-2", "resolution": "4k", "quality": "medium"}, 32, "4k")]
    for body, credits, resolution in cases:
        created = await create(gateway, {"prompt": PROMPT, **body})
        assert (created["creditsCharged"], created["resolution"]) == (credits, resolution), body
        job = await gateway.state.store.get_job(created["historyId"])
        assert job is not None and job.credits == credits


async def test_model_defaults_to_the_first_configured(gateway: RunningGateway) -> None:
    created = await create(gateway, {"prompt": PROMPT})
    assert created["model"] == next(iter(gateway.settings.models)) == "demo-image"
    assert created["aspectRatio"] == "1:1" and created["resolution"] == "1k"


async def test_model_default_is_configurable(config: dict[str, Any]) -> None:
    config = merge(config, {"surfaces": {"default_model": "nano-banana-2"}})
    async with run_gateway(config) as gateway:
        created = await create(gateway, {"prompt": PROMPT})
    assert created["model"] == "nano-banana-2" and created["creditsCharged"] == 5


async def test_multipart_with_reference_images(gateway: RunningGateway) -> None:
    first, second = png_bytes(30, 30, (9, 9, 9)), png_bytes(20, 20, (7, 7, 7))
    status, created = await call(gateway, "POST", "/api/v1/generations", data=form(
        {"prompt": PROMPT, "model": "nano-banana-2", "resolution": "1k"},
        [("images", "one.png", first, "image/png"),
         ("images", "two.bin", second, "application/octet-stream")]))
    assert status == 200, created
    assert created["status"] == "pending" and created["creditsCharged"] == 5
    # With references and no ratio asked, the provider may follow the input's shape.
    assert created["aspectRatio"] is None

    job = await gateway.state.store.get_job(created["historyId"])
    assert job is not None and job.surface == "modelmux"
    assert [await gateway.state.storage.get(str(ref.blob)) for ref in job.request.images] == [
        first, second]
    assert "referenceImages" in job.client_params
    assert (await wait_done(gateway, created["historyId"]))["status"] == "completed"


async def test_reference_image_errors_413_and_415(gateway: RunningGateway) -> None:
    big = png_bytes(400, 400) + b"\0" * 60_000
    status, body = await call(gateway, "POST", "/api/v1/generations", data=form(
        {"prompt": PROMPT}, [("image", "big.png", big, "image/png")]))
    assert status == 413 and body["code"] == "payload_too_large"
    assert set(body) == {"error", "code"}

    # Named and labelled as a PNG, but the bytes are text.
    status, body = await call(gateway, "POST", "/api/v1/generations", data=form(
        {"prompt": PROMPT}, [("image", "fox.png", b"hello, not an image", "image/png")]))
    assert status == 415 and body["code"] == "unsupported_media_type"
    assert "fox.png" in body["error"]


async def test_bad_input_is_400(gateway: RunningGateway) -> None:
    cases: list[dict[str, Any]] = [
        {"model": "nano-banana"},  # no prompt
        {"prompt": PROMPT, "model": "midjourney"},
        {"prompt": PROMPT, "model": "nano-banana", "resolution": "4k"},
        {"prompt": PROMPT, "model": "nano-banana-pro", "resolution": "8k"},
        {"prompt": PROMPT, "model": "nano-banana-pro", "aspectRatio": "5:4"},
        {"prompt": PROMPT, "model": "gpt-image-2", "quality": "ultra"},
        {"prompt": PROMPT, "n": 2},
    ]
    for case in cases:
        status, body = await call(gateway, "POST", "/api/v1/generations", json=case)
        assert status == 400, case
        assert set(body) == {"error", "code"} and body["code"] == "invalid_request", case
    for data, content_type in [(b"{not json", "application/json"),
                               (b"prompt=fox", "application/x-www-form-urlencoded"),
                               (b"--x\r\nbroken", "multipart/form-data; boundary=x")]:
        status, body = await call(gateway, "POST", "/api/v1/generations", data=data,
                                  headers={"Content-Type": content_type})
        assert status == 400 and set(body) == {"error", "code"}, content_type
    status, body = await call(gateway, "POST", "/api/v1/generations", data=form(
        {"prompt": PROMPT}, [(f"image{i}", "a.png", png_bytes(), "image/png")
                             for i in range(4)]))
    assert status == 400 and "reference images" in body["error"]


async def test_auth_is_401(gateway: RunningGateway) -> None:
    for key in (None, "wrong-key-0000"):
        status, body = await call(gateway, "GET", "/api/v1/generations/anything", key=key)
        assert status == 401 and body["code"] == "invalid_api_key"
        assert set(body) == {"error", "code"}


async def test_not_found_and_not_ready_are_404(gateway: RunningGateway) -> None:
    status, body = await call(gateway, "GET", "/api/v1/generations/nope")
    assert (status, body) == (404, {"error": "generation not found", "code": "not_found"})

    created = await create(gateway, {"prompt": PROMPT, "model": "slow"})
    history_id = created["historyId"]
    status, body = await call(gateway, "GET", f"/api/v1/generations/{history_id}/image")
    assert status == 404 and body["code"] == "not_ready"
    # Another key cannot see it at all.
    status, body = await call(gateway, "GET", f"/api/v1/generations/{history_id}", key=KEY_B)
    assert status == 404 and body["code"] == "not_found"
    assert (await wait_done(gateway, history_id))["status"] == "completed"
    status, _ = await call(gateway, "GET", f"/api/v1/generations/{history_id}/image", key=KEY_B)
    assert status == 404

    for method, path, expected in [("DELETE", "/api/v1/generations", 405),
                                   ("GET", f"/api/v1/generations/{history_id}/thumb", 404)]:
        status, body = await call(gateway, method, path)
        assert status == expected and set(body) == {"error", "code"}


async def test_failed_generation_is_refunded(gateway: RunningGateway) -> None:
    created = await create(gateway, {"prompt": PROMPT, "model": "broken"})
    done = await wait_done(gateway, created["historyId"])
    assert done["status"] == "failed" and done["creditsUsed"] == 0
    assert done["errorMessage"] == "demo failure (configured failure_rate)"
    assert done["outputUrl"] is None and done["completedAt"] is not None
    status, body = await call(gateway, "GET",
                              f"/api/v1/generations/{created['historyId']}/image")
    assert status == 404 and body["code"] == "generation_failed"
    task = await gateway.task(created["historyId"])
    assert task["state"] == "failed" and task["failMsg"] == done["errorMessage"]


async def test_native_jobs_are_visible_here(gateway: RunningGateway) -> None:
    task_id = await gateway.submit({"model": "demo-image", "prompt": PROMPT, "size": "96x64"})
    done = await wait_done(gateway, task_id)
    assert done["status"] == "completed" and done["model"] == "demo-image"
    async with gateway.http.get(f"{gateway.url}/api/v1/generations/{task_id}/image",
                                headers=gateway.headers()) as resp:
        assert image_size(await resp.read()) == (96, 64)


async def test_unexpected_errors_are_500(gateway: RunningGateway,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    created = await create(gateway, {"prompt": PROMPT})
    await wait_done(gateway, created["historyId"])

    def broken(key: str) -> str:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gateway.state.storage, "local_path", broken)
    status, body = await call(gateway, "GET",
                              f"/api/v1/generations/{created['historyId']}/image")
    assert (status, body) == (500, {"error": "internal server error", "code": "internal_error"})


# 429 has no trigger yet (rate limits come later): the shape is checked on the
# renderer, and once over HTTP with the authenticator raising it.

def test_rate_limit_shape() -> None:
    response = modelmux.render_error(RateLimited("rate limit exceeded", retry_after=4))
    assert response.status_code == 429 and response.headers["retry-after"] == "4"
    assert orjson.loads(bytes(response.body)) == {"error": "rate limit exceeded",
                                                  "code": "rate_limit_exceeded"}


async def test_rate_limit_over_http(gateway: RunningGateway,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(request: object) -> None:
        error: MuxError = RateLimited("rate limit exceeded", retry_after=1)
        raise error

    monkeypatch.setattr(gateway.state.auth, "authenticate", refuse)
    async with gateway.http.post(f"{gateway.url}/api/v1/generations",
                                 json={"prompt": PROMPT}) as resp:
        assert resp.status == 429 and resp.headers["retry-after"] == "1"
        assert await resp.json() == {"error": "rate limit exceeded",
                                     "code": "rate_limit_exceeded"}
