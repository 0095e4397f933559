"""``server.cors_origins``: browser clients on every client surface (native, OpenAI,
ModelMux, files), preflights answered, the job id, Retry-After and request id
readable; admin and ops paths, and every path when unset, get no CORS at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from muxproxy.settings import SettingsError, parse_settings
from tests.support.gateway import RunningGateway, base_config, merge, run_gateway

APP = "https://app.example"
ADMIN = "admin-token-for-cors-0001"


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return merge(base_config(tmp_path), {"server": {"cors_origins": [APP]},
                                         "admin": {"token": ADMIN}})


def exposed(headers: Any) -> set[str]:
    return {h.strip().lower() for h in headers["access-control-expose-headers"].split(",")}


async def test_preflight_is_answered_for_the_allowed_origin(gateway: RunningGateway) -> None:
    for path in ("/v1/images/generations", "/v1/images/edits", "/api/v1/images/generations",
                 "/api/v1/generations", "/v1/models"):
        async with gateway.http.options(f"{gateway.url}{path}", headers={
                "Origin": APP, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
        }) as resp:
            assert resp.status == 200, path
            assert resp.headers["access-control-allow-origin"] == APP
            assert "POST" in resp.headers["access-control-allow-methods"]
            allowed = resp.headers["access-control-allow-headers"].lower()
            assert {"authorization", "content-type", "idempotency-key"} <= {
                h.strip() for h in allowed.split(",")}
            assert "access-control-allow-credentials" not in resp.headers
    async with gateway.http.options(f"{gateway.url}/v1/images/generations", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}) as resp:
        assert resp.status == 400
        assert "access-control-allow-origin" not in resp.headers


async def test_cross_origin_calls_expose_the_gateway_headers(gateway: RunningGateway) -> None:
    headers = {**gateway.headers(), "Origin": APP}
    async with gateway.http.post(f"{gateway.url}/v1/images/generations", headers=headers,
                                 json={"model": "demo-image", "prompt": "a red kite",
                                       "size": "64x64"}) as resp:
        assert resp.status == 200
        assert resp.headers["access-control-allow-origin"] == APP
        assert {"x-muxproxy-job-id", "retry-after", "x-request-id"} <= exposed(resp.headers)
        assert resp.headers["x-muxproxy-job-id"] and resp.headers["x-request-id"]
        link = (await resp.json())["data"][0]["url"]
    # The signed file link, the native and the ModelMux surfaces.
    async with gateway.http.get(link, headers={"Origin": APP}) as resp:
        assert resp.status == 200 and resp.headers["access-control-allow-origin"] == APP
    async with gateway.http.post(f"{gateway.url}/api/v1/images/generations", headers=headers,
                                 json={"model": "demo-image", "prompt": "x"}) as resp:
        assert resp.status == 200 and resp.headers["access-control-allow-origin"] == APP
    async with gateway.http.get(f"{gateway.url}/api/v1/generations/nope",
                                headers=headers) as resp:
        assert resp.status == 404 and resp.headers["access-control-allow-origin"] == APP
    # An error is readable too (the browser would otherwise hide its body).
    async with gateway.http.post(f"{gateway.url}/v1/images/generations",
                                 headers={"Origin": APP}, json={"prompt": "x"}) as resp:
        assert resp.status == 401 and resp.headers["access-control-allow-origin"] == APP
    # Another origin gets no permission.
    async with gateway.http.get(f"{gateway.url}/v1/models",
                                headers={**gateway.headers(), "Origin": "https://evil.example"}
                                ) as resp:
        assert resp.status == 200 and "access-control-allow-origin" not in resp.headers


async def test_admin_and_ops_get_no_cors(gateway: RunningGateway) -> None:
    async with gateway.http.get(f"{gateway.url}/admin/keys", headers={
            "Authorization": f"Bearer {ADMIN}", "Origin": APP}) as resp:
        assert resp.status == 200 and "access-control-allow-origin" not in resp.headers
    async with gateway.http.options(f"{gateway.url}/admin/keys", headers={
            "Origin": APP, "Access-Control-Request-Method": "GET"}) as resp:
        assert resp.status == 405 and "access-control-allow-origin" not in resp.headers
    async with gateway.http.get(f"{gateway.url}/healthz", headers={"Origin": APP}) as resp:
        assert "access-control-allow-origin" not in resp.headers


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with run_gateway(base_config(tmp_path)) as gateway:
        yield gateway


async def test_no_cors_by_default(plain: RunningGateway) -> None:
    async with plain.http.options(f"{plain.url}/v1/images/generations", headers={
            "Origin": APP, "Access-Control-Request-Method": "POST"}) as resp:
        assert resp.status == 405 and "access-control-allow-origin" not in resp.headers
    async with plain.http.get(f"{plain.url}/v1/models",
                              headers={**plain.headers(), "Origin": APP}) as resp:
        assert resp.status == 200 and "access-control-allow-origin" not in resp.headers


async def test_any_origin(tmp_path: Path) -> None:
    config = merge(base_config(tmp_path), {"server": {"cors_origins": ["*"]}})
    async with run_gateway(config) as gateway, gateway.http.get(
            f"{gateway.url}/v1/models",
            headers={**gateway.headers(), "Origin": "http://localhost:5173"}) as resp:
        assert resp.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("origin", ["app.example", "https://app.example/", "ftp://x", ""])
def test_bad_origins_are_refused(origin: str) -> None:
    raw = {"server": {"secret": "0123456789abcdef", "cors_origins": [origin]}}
    with pytest.raises(SettingsError, match=r"server\.cors_origins"):
        parse_settings(raw, {})
