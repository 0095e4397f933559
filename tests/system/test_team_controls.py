"""Rate limits, concurrency limits, model access, revocation and idempotency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from muxproxy.clock import ManualClock
from muxproxy.ratelimit import RateLimiter
from tests.support.gateway import RunningGateway, merge, run_gateway
from tests.support.wait import eventually

LIMITED = "limited-key-0000001"
ADMIN = "admin-token-for-tests-0001"
URL = "/api/v1/images/generations"


def with_key(config: dict[str, Any], **limits: Any) -> dict[str, Any]:
    merged = merge(config, {"admin": {"token": ADMIN}})
    merged["keys"] = [*config["keys"], {"name": "limited", "key": LIMITED, "unlimited": True,
                                        **limits}]
    return merged


async def post(gw: RunningGateway, body: dict[str, Any], key: str = LIMITED,
               headers: dict[str, str] | None = None,
               path: str = URL) -> tuple[int, Any, Any]:
    async with gw.http.post(gw.url + path, json=body,
                            headers={**gw.headers(key), **(headers or {})}) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_requests_per_minute(config: dict[str, Any]) -> None:
    clock = ManualClock()
    async with run_gateway(with_key(config, rpm=2), clock=clock) as gw:
        for _ in range(2):
            status, _, _ = await post(gw, {"model": "demo-image", "prompt": "ok"})
            assert status == 200
        status, body, headers = await post(gw, {"model": "demo-image", "prompt": "too many"})
        assert status == 429
        assert body["code"] == 429
        assert "2 requests per minute" in body["msg"]
        assert headers["Retry-After"] == "30"
        # Polling does not count against the create rate.
        async with gw.http.get(gw.url + URL, params={"task_id": "x"},
                               headers=gw.headers(LIMITED)) as resp:
            assert resp.status == 404
        clock.advance(30)
        status, _, _ = await post(gw, {"model": "demo-image", "prompt": "refilled"})
        assert status == 200
        # The limit is per key: another key is unaffected.
        status, _, _ = await post(gw, {"model": "demo-image", "prompt": "other"},
                                  key=gw.settings.keys[0].key)
        assert status == 200
        async with gw.http.get(gw.url + "/metrics") as resp:
            assert 'muxproxy_requests_refused_total{reason="rate_limit"} 1.0' in (
                await resp.text())


async def test_rate_limit_in_the_openai_shape(config: dict[str, Any]) -> None:
    async with run_gateway(with_key(config, rpm=1)) as gw:
        body = {"model": "demo-image", "prompt": "one", "size": "256x256"}
        status, _, _ = await post(gw, body, path="/v1/images/generations")
        assert status == 200
        status, data, headers = await post(gw, body, path="/v1/images/generations")
        assert status == 429
        assert data["error"]["type"] == "rate_limit_error"
        assert int(headers["Retry-After"]) >= 1


async def test_concurrent_jobs_in_flight(config: dict[str, Any]) -> None:
    clock = ManualClock()  # the demo's delay never elapses: jobs stay in flight
    slow = merge(with_key(config, max_concurrent=2),
                 {"providers": {"demo": {"options": {"delay_seconds": 3600}}}})
    async with run_gateway(slow, clock=clock) as gw:
        for _ in range(2):
            assert (await post(gw, {"model": "demo-image", "prompt": "busy"}))[0] == 200
        status, body, headers = await post(gw, {"model": "demo-image", "prompt": "third"})
        assert status == 429
        assert "2 jobs already in flight" in body["msg"]
        assert headers["Retry-After"] == "1"
        assert sum((await gw.state.store.count_jobs()).values()) == 2


async def test_allowed_models(config: dict[str, Any]) -> None:
    async with run_gateway(with_key(config, models=["demo-image"])) as gw:
        assert (await post(gw, {"model": "demo-image", "prompt": "allowed"}))[0] == 200
        status, body, _ = await post(gw, {"model": "demo-image-async", "prompt": "not allowed"})
        assert status == 403
        assert body == {"code": 403, "msg": "this API key may not use model 'demo-image-async'",
                        "data": None}
        status, body, _ = await post(gw, {"model": "demo-image-async", "prompt": "x"},
                                     path="/api/v1/generations")
        assert status == 403
        assert body["code"] == "forbidden"


async def test_revoked_key_is_refused_at_once(config: dict[str, Any]) -> None:
    async with run_gateway(with_key(config)) as gw:
        status, body, _ = await post(gw, {"model": "demo-image", "prompt": "before"})
        assert status == 200
        task_id = body["data"]["taskId"]
        limited = await gw.state.store.key_named("limited")
        assert limited is not None
        async with gw.http.post(f"{gw.url}/admin/keys/{limited.id}/revoke",
                                headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["revoked_at"] is not None
        status, body, _ = await post(gw, {"model": "demo-image", "prompt": "after"})
        assert (status, body["code"]) == (401, 401)
        async with gw.http.get(gw.url + URL, params={"task_id": task_id},
                               headers=gw.headers(LIMITED)) as resp:
            assert resp.status == 401


def test_token_bucket() -> None:
    limiter, now = RateLimiter(), 1_700_000_000_000
    assert [limiter.acquire("k", 60, now) for _ in range(60)] == [None] * 60
    assert limiter.acquire("k", 60, now) == pytest.approx(1.0)
    assert limiter.acquire("k", 60, now + 500) == pytest.approx(0.5)
    assert limiter.acquire("k", 60, now + 1000) is None
    # Refills to the burst, no further; a clock that steps back refills nothing.
    later = now + 3_600_000
    assert [limiter.acquire("k", 60, later) for _ in range(61)].count(None) == 60
    assert limiter.acquire("k", 60, later - 5000) == pytest.approx(1.0)


# -- idempotency -----------------------------------------------------------------

async def test_retry_with_the_same_key_returns_the_first_response(
        gateway: RunningGateway) -> None:
    body = {"model": "demo-image", "prompt": "exactly once"}
    key = gateway.settings.keys[0].key
    first = await post(gateway, body, key=key, headers={"Idempotency-Key": "order-17"})
    again = await post(gateway, body, key=key, headers={"Idempotency-Key": "order-17"})
    assert first[0] == again[0] == 200
    # The same job, as it stands now (it may have started since).
    assert first[1]["data"]["taskId"] == again[1]["data"]["taskId"]
    assert again[2]["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first[2]
    assert sum((await gateway.state.store.count_jobs()).values()) == 1
    # Another API key may use the same idempotency key for its own request.
    other = await post(gateway, body, key=gateway.settings.keys[1].key,
                       headers={"Idempotency-Key": "order-17"})
    assert other[1]["data"]["taskId"] != first[1]["data"]["taskId"]


async def test_same_key_different_body_is_refused(gateway: RunningGateway) -> None:
    key = gateway.settings.keys[0].key
    await post(gateway, {"model": "demo-image", "prompt": "a"}, key=key,
               headers={"Idempotency-Key": "k1"})
    status, body, _ = await post(gateway, {"model": "demo-image", "prompt": "b"}, key=key,
                                 headers={"Idempotency-Key": "k1"})
    assert status == 422
    assert body["code"] == 422
    assert "different request" in body["msg"]
    assert sum((await gateway.state.store.count_jobs()).values()) == 1


async def test_failed_requests_are_not_remembered(gateway: RunningGateway) -> None:
    key = gateway.settings.keys[0].key
    bad = {"model": "demo-image", "prompt": "x", "size": "nope"}
    assert (await post(gateway, bad, key=key, headers={"Idempotency-Key": "k2"}))[0] == 400
    good = {"model": "demo-image", "prompt": "x"}
    # A corrected retry with the same key runs (the 400 was not stored).
    assert (await post(gateway, bad, key=key, headers={"Idempotency-Key": "k2"}))[0] == 400
    assert (await post(gateway, good, key=key, headers={"Idempotency-Key": "k3"}))[0] == 200


async def test_idempotency_keys_expire(config: dict[str, Any]) -> None:
    clock = ManualClock()
    ttl = merge(config, {"limits": {"idempotency_ttl_seconds": 60}})
    async with run_gateway(ttl, clock=clock) as gw:
        key = gw.settings.keys[0].key
        body = {"model": "demo-image", "prompt": "expiring"}
        first = await post(gw, body, key=key, headers={"Idempotency-Key": "k"})
        clock.advance(30)
        again = await post(gw, body, key=key, headers={"Idempotency-Key": "k"})
        assert again[1]["data"]["taskId"] == first[1]["data"]["taskId"]
        clock.advance(31)
        later = await post(gw, body, key=key, headers={"Idempotency-Key": "k"})
        assert later[1]["data"]["taskId"] != first[1]["data"]["taskId"]
        assert sum((await gw.state.store.count_jobs()).values()) == 2


async def test_retry_while_the_first_is_waiting_waits_for_the_same_job(
        config: dict[str, Any]) -> None:
    clock = ManualClock()
    slow = merge(config, {"providers": {"demo": {"options": {"delay_seconds": 5}}}})
    async with run_gateway(slow, clock=clock) as gw:
        key = gw.settings.keys[0].key
        body = {"model": "demo-image", "prompt": "slow", "size": "256x256"}
        headers = {"Idempotency-Key": "waiting"}
        first = asyncio.create_task(post(gw, body, key=key, headers=headers,
                                         path="/v1/images/generations"))

        async def job_exists() -> bool:
            return bool(await gw.state.store.count_jobs())

        await eventually(job_exists, timeout=5)
        # The first call's job is bound to the key: the retry waits for it too.
        second = asyncio.create_task(post(gw, body, key=key, headers=headers,
                                          path="/v1/images/generations"))

        owner = await gw.state.store.key_named(gw.settings.keys[0].name)
        assert owner is not None
        [job] = await gw.state.store.list_jobs(owner.id)
        await eventually(lambda: gw.state.events.waiting(job.id) == 2, timeout=5)
        clock.advance(5)
        assert (await first)[0] == 200
        replay = await second
        assert replay[0] == 200
        assert replay[2]["Idempotent-Replayed"] == "true"
        assert replay[1]["data"] == (await first)[1]["data"]
        assert sum((await gw.state.store.count_jobs()).values()) == 1


async def test_idempotency_on_the_modelmux_surface(gateway: RunningGateway) -> None:
    key = gateway.settings.keys[0].key
    body = {"model": "demo-image", "prompt": "mm"}
    first = await post(gateway, body, key=key, headers={"Idempotency-Key": "mm-1"},
                       path="/api/v1/generations")
    again = await post(gateway, body, key=key, headers={"Idempotency-Key": "mm-1"},
                       path="/api/v1/generations")
    assert first[1]["historyId"] == again[1]["historyId"]
