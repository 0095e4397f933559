"""The in-process API key cache: a key revoked through the admin API is refused on
its very next request; one revoked by another process within the cache's second."""

from __future__ import annotations

import asyncio
from typing import Any

from muxproxy.clock import now_ms
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, merge, run_gateway

ADMIN = "admin-token-for-tests-0001"
URL = "/api/v1/images/generations"


async def status_of(gw: RunningGateway, key: str) -> int:
    async with gw.http.get(gw.url + URL, params={"task_id": "none"},
                           headers=gw.headers(key)) as resp:
        await resp.read()
        return resp.status


async def test_admin_revoke_refuses_the_next_request(config: dict[str, Any]) -> None:
    async with run_gateway(merge(config, {"admin": {"token": ADMIN}})) as gw:
        assert await status_of(gw, KEY_A) == 404  # authenticated (and now cached)
        alpha = await gw.state.store.key_named("alpha")
        assert alpha is not None
        async with gw.http.post(f"{gw.url}/admin/keys/{alpha.id}/revoke",
                                headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 200, await resp.text()
        assert await status_of(gw, KEY_A) == 401
        assert await status_of(gw, KEY_B) == 404


async def test_revoke_elsewhere_takes_effect_within_the_cache_ttl(
        config: dict[str, Any]) -> None:
    async with run_gateway(config) as gw:
        assert await status_of(gw, KEY_A) == 404
        # As `muxproxy keys revoke` does from its own process: straight in the store.
        alpha = await gw.state.store.key_named("alpha")
        assert alpha is not None
        await gw.state.store.revoke_key(alpha.id, now=now_ms(gw.state.clock))
        async with asyncio.timeout(gw.state.auth.cache_seconds + 2):
            while True:
                if await status_of(gw, KEY_A) == 401:
                    break
                await asyncio.sleep(0.05)
