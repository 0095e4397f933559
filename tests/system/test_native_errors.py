"""Every error of the native task API: the right status, the native body, nothing stored."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.gateway import KEY_A, RunningGateway, merge, run_gateway

URL = "/api/v1/images/generations"
GOOD = {"model": "demo-image", "prompt": "a red fox"}


def png_b64(size: tuple[int, int] = (8, 8)) -> str:
    out = io.BytesIO()
    noise = os.urandom(size[0] * size[1] * 3)  # incompressible, so size means bytes
    Image.frombytes("RGB", size, noise).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def post(gateway: RunningGateway, data: Any = None, *,
               json: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    hdrs = {"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"}
    hdrs.update(headers or {})
    async with gateway.http.post(gateway.url + URL, data=data, json=json,
                                 headers=hdrs) as resp:
        return resp.status, await resp.json(content_type=None)


async def stored_jobs(gateway: RunningGateway) -> int:
    return sum((await gateway.state.store.count_jobs()).values())


def assert_native_error(status: int, body: Any, expected: int, fragment: str) -> None:
    assert status == expected, body
    assert set(body) == {"code", "msg", "data"}
    assert body["code"] == expected
    assert body["data"] is None
    assert fragment.lower() in body["msg"].lower(), body["msg"]


@pytest.mark.parametrize(("body", "fragment"), [
    ({"prompt": "x"}, "'model' is required"),
    ({"model": "demo-image"}, "'prompt' is required"),
    ({"model": "demo-image", "prompt": "   "}, "must not be empty"),
    ({"model": "nope", "prompt": "x"}, "unknown model 'nope'"),
    ({**GOOD, "size": "9999x1"}, "unsupported size"),
    ({**GOOD, "size": "big"}, "unsupported size"),
    ({**GOOD, "aspect_ratio": "16-9"}, "unsupported aspect_ratio"),
    ({**GOOD, "aspect_ratio": "20:1"}, "unsupported aspect_ratio"),
    ({**GOOD, "resolution": "8k"}, "unsupported resolution"),
    ({**GOOD, "quality": "ultra"}, "unsupported quality"),
    ({**GOOD, "output_format": "bmp"}, "unsupported output_format"),
    ({**GOOD, "n": 0}, "'n' must be between 1 and 10"),
    ({**GOOD, "n": 11}, "'n' must be between 1 and 10"),
    ({**GOOD, "n": "two"}, "'n' must be an integer"),
    ({**GOOD, "n": True}, "'n' must be an integer"),
    ({**GOOD, "prompt": 42}, "'prompt' must be a string"),
    ({**GOOD, "model": ["demo-image"]}, "'model' must be a string"),
    ({**GOOD, "image_url": "ftp://example.com/a.png"}, "must be an http(s) URL"),
    ({**GOOD, "image_urls": "https://example.com/a.png"}, "'image_urls' must be an array"),
    ({**GOOD, "image_base64": "not base64!!"}, "not valid base64"),
    ({**GOOD, "mask_base64": png_b64()}, "a mask needs a reference image"),
    ({**GOOD, "callback_url": "javascript:alert(1)"}, "'callback_url' must be an http(s) URL"),
    ({**GOOD, "callback_url": "https://example.com/\r\nX-Injected: 1"}, "not a valid URL"),
    ({**GOOD, "colour": "red"}, "unknown field: colour"),
    ({**GOOD, "prompt": "a\x00b"}, "NUL"),
])
async def test_invalid_parameters_are_400(gateway: RunningGateway, body: dict[str, Any],
                                          fragment: str) -> None:
    status, payload = await post(gateway, json=body)
    assert_native_error(status, payload, 400, fragment)
    assert await stored_jobs(gateway) == 0


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"{not json", "malformed JSON"),
    (b"", "body is empty"),
    (b"[1, 2]", "must be a JSON object"),
    (b"\xff\xfe\x00garbage", "malformed JSON"),
    (b'"just a string"', "must be a JSON object"),
])
async def test_malformed_bodies_are_400(gateway: RunningGateway, raw: bytes,
                                        fragment: str) -> None:
    status, payload = await post(gateway, raw)
    assert_native_error(status, payload, 400, fragment)
    assert await stored_jobs(gateway) == 0


async def test_wrong_content_type_is_415(gateway: RunningGateway) -> None:
    status, payload = await post(gateway, b"model=demo-image",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_native_error(status, payload, 415, "application/json")


async def test_base64_that_is_not_an_image_is_415(gateway: RunningGateway) -> None:
    body = {**GOOD, "image_base64": base64.b64encode(b"%PDF-1.4 not an image").decode()}
    status, payload = await post(gateway, json=body)
    assert_native_error(status, payload, 415, "is not a PNG, JPEG, WebP or GIF image")
    assert await stored_jobs(gateway) == 0


async def test_fifty_megabyte_body_is_413(gateway: RunningGateway) -> None:
    big = b'{"model": "demo-image", "prompt": "' + b"x" * (50 * 1024 * 1024) + b'"}'
    status, payload = await post(gateway, io.BytesIO(big))
    assert_native_error(status, payload, 413, "exceeds the")
    assert await stored_jobs(gateway) == 0


async def test_chunked_body_over_the_limit_is_413(tmp_path: Path,
                                                  config: dict[str, Any]) -> None:
    async def chunks() -> Any:
        yield b'{"model": "demo-image", "prompt": "'
        for _ in range(64):
            yield b"y" * 1024
        yield b'"}'

    async with run_gateway(merge(config, {"limits": {"max_body_bytes": 32 * 1024}})) as gw:
        status, payload = await post(gw, chunks())
        assert_native_error(status, payload, 413, "exceeds the 32768 byte limit")
        assert await stored_jobs(gw) == 0


async def test_oversized_reference_image_is_413(config: dict[str, Any]) -> None:
    async with run_gateway(merge(config, {"limits": {"max_image_bytes": 1000}})) as gw:
        status, payload = await post(gw, json={**GOOD, "image_base64": png_b64((300, 300))})
        assert_native_error(status, payload, 413, "larger than 1000 bytes")


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-key-000000"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer "},
    {"x-api-key": "wrong-key-000000"},
])
async def test_missing_or_wrong_key_is_401(gateway: RunningGateway,
                                           headers: dict[str, str]) -> None:
    async with gateway.http.post(gateway.url + URL, json=GOOD, headers=headers) as resp:
        assert_native_error(resp.status, await resp.json(), 401, "API key")
    async with gateway.http.get(gateway.url + URL, params={"task_id": "x"},
                                headers=headers) as resp:
        assert_native_error(resp.status, await resp.json(), 401, "API key")
    assert await stored_jobs(gateway) == 0


async def test_x_api_key_header_is_accepted(gateway: RunningGateway) -> None:
    async with gateway.http.post(gateway.url + URL, json=GOOD,
                                 headers={"x-api-key": KEY_A}) as resp:
        assert resp.status == 200


async def test_unknown_task_and_missing_task_id(gateway: RunningGateway) -> None:
    async with gateway.http.get(gateway.url + URL, params={"task_id": "nope"},
                                headers=gateway.headers()) as resp:
        assert_native_error(resp.status, await resp.json(), 404, "task not found")
    async with gateway.http.get(gateway.url + URL, headers=gateway.headers()) as resp:
        assert_native_error(resp.status, await resp.json(), 400, "'task_id'")


async def test_unknown_route_and_method_in_native_shape(gateway: RunningGateway) -> None:
    async with gateway.http.get(gateway.url + "/api/v1/nothing-here") as resp:
        assert_native_error(resp.status, await resp.json(), 404, "no route")
    async with gateway.http.delete(gateway.url + URL, headers=gateway.headers()) as resp:
        assert_native_error(resp.status, await resp.json(), 405, "not allowed")


async def test_a_storage_failure_is_a_clean_503(gateway: RunningGateway) -> None:
    # Make the image folder unusable: storing the reference image fails inside
    # the gateway. The client gets a 503 in the native shape, no traceback, no path.
    root = Path(gateway.settings.storage.url.removeprefix("file://"))
    (root / "inputs").write_text("not a directory")
    status, payload = await post(gateway, json={**GOOD, "image_base64": png_b64()})
    assert_native_error(status, payload, 503, "could not store the reference images")
    assert "Traceback" not in str(payload) and str(root) not in str(payload)
    assert await stored_jobs(gateway) == 0
