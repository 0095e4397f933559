"""One tenant cannot degrade the others' callbacks: relay slots per key, bounded
redelivery, and private networks granted to one key only."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import pytest

from muxproxy.clock import ManualClock
from muxproxy.settings import SettingsError, parse_settings
from muxproxy.webhooks.outbox import DeliveryStatus
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, merge, run_gateway
from tests.support.webhooks import (
    LOOPBACK,
    Answer,
    Receiver,
    SilentReceiver,
    StaticResolver,
    delivery,
    next_attempt,
    until,
    wait_attempts,
)


@pytest.fixture
def hooks(config: dict[str, Any]) -> dict[str, Any]:
    return merge(config, LOOPBACK)


async def test_silent_receivers_of_one_key_leave_slots_for_the_others(
        hooks: dict[str, Any]) -> None:
    # Defaults: 16 slots, 4 per host. Six silent hosts of key A could hold all 16.
    async with AsyncExitStack() as stack:
        silent = [await stack.enter_async_context(SilentReceiver()) for _ in range(6)]
        receiver = await stack.enter_async_context(Receiver())
        gateway = await stack.enter_async_context(run_gateway(hooks))
        stack.push_async_callback(_hang_up, silent)
        tasks = [await gateway.submit({"model": "demo-image", "prompt": "x",
                                       "callback_url": silent[i % 6].url()}, key=KEY_A)
                 for i in range(24)]
        for task_id in tasks:
            await gateway.wait_terminal(task_id, key=KEY_A)
        await until(lambda: sum(s.accepted for s in silent) >= 4)

        started = time.monotonic()
        task_b = await gateway.submit({"model": "demo-image", "prompt": "x",
                                       "callback_url": receiver.url()}, key=KEY_B)
        await receiver.wait_hits(1, timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert receiver.hits[0].json["data"]["taskId"] == task_b
        assert sum(s.accepted for s in silent) <= gateway.settings.webhooks.max_per_key


async def _hang_up(silent: list[SilentReceiver]) -> None:
    for receiver in silent:
        receiver.hang_up()


async def redeliver(gateway: RunningGateway, task_id: str, key: str = KEY_A
                    ) -> tuple[int, dict[str, Any]]:
    async with gateway.http.post(f"{gateway.url}/api/v1/webhooks/redeliver",
                                 json={"task_id": task_id},
                                 headers=gateway.headers(key)) as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def given_up(gateway: RunningGateway, receiver: Receiver) -> str:
    """A task whose callback the receiver refused with 410 (failed, not retried)."""
    receiver.script.append(Answer(410))
    task_id = await gateway.submit({"model": "demo-image", "prompt": "x",
                                    "callback_url": receiver.url()})
    done = await wait_attempts(gateway, task_id, 1)
    assert done.status is DeliveryStatus.FAILED
    return task_id


async def test_one_redelivery_at_a_time(hooks: dict[str, Any]) -> None:
    async with Receiver() as receiver, run_gateway(hooks) as gateway:
        task_id = await given_up(gateway, receiver)
        receiver.script.append(Answer(hang=True))
        status, body = await redeliver(gateway, task_id)
        assert status == 200 and body["data"]["status"] == "pending"
        await receiver.wait_hits(2)  # the redelivery is in flight
        status, body = await redeliver(gateway, task_id)
        assert status == 409, body
        assert body["code"] == 409 and body["data"] is None
        assert "still pending" in body["msg"]
        assert len(receiver.hits) == 2


async def test_redeliver_spends_the_keys_rate(hooks: dict[str, Any]) -> None:
    clock = ManualClock()  # no refill while the test runs
    keys = [{"name": "alpha", "key": KEY_A, "unlimited": True, "rpm": 3},
            {"name": "bravo", "key": KEY_B, "unlimited": True}]
    async with Receiver(clock) as receiver, \
            run_gateway(merge(hooks, {"keys": keys}), clock=clock) as gateway:
        tasks = [await given_up(gateway, receiver) for _ in range(2)]
        status, _ = await redeliver(gateway, tasks[0])
        assert status == 200
        async with gateway.http.post(f"{gateway.url}/api/v1/webhooks/redeliver",
                                     json={"task_id": tasks[1]},
                                     headers=gateway.headers()) as resp:
            body = await resp.json()
            assert resp.status == 429, body
            assert body["code"] == 429 and "rate limit" in body["msg"]
            assert float(resp.headers["Retry-After"]) > 0
        assert (await delivery(gateway, tasks[1])).status is DeliveryStatus.FAILED


async def test_only_the_newest_attempts_are_kept(hooks: dict[str, Any]) -> None:
    clock = ManualClock()
    config = merge(hooks, {"webhooks": {"max_attempts_kept": 3}})
    async with Receiver(clock) as receiver, run_gateway(config, clock=clock) as gateway:
        receiver.default = Answer(500)
        task_id = await gateway.submit({"model": "demo-image", "prompt": "x",
                                        "callback_url": receiver.url()})
        current = await wait_attempts(gateway, task_id, 1)
        while current.attempts < 6:
            current = await next_attempt(gateway, clock, task_id)
        kept = await gateway.state.store.list_attempts(current.id)
        assert [a.number for a in kept] == [4, 5, 6]
        assert all(a.status_code == 500 for a in kept)


async def test_private_networks_granted_to_one_key_only(config: dict[str, Any]) -> None:
    # No global allow_networks: key A alone may call back to loopback.
    keys = [{"name": "alpha", "key": KEY_A, "unlimited": True,
             "webhook_allow_networks": ["127.0.0.0/8"]},
            {"name": "bravo", "key": KEY_B, "unlimited": True}]
    # rebind.test looks public at submit and is loopback when the relay dials.
    resolver = StaticResolver({"rebind.test": ["8.8.8.8", "127.0.0.1"],
                               "local.test": ["127.0.0.1"]})
    async with Receiver() as receiver, run_gateway(merge(config, {"keys": keys}),
                                                   resolver=resolver) as gateway:
        granted = [await gateway.submit({"model": "demo-image", "prompt": "x",
                                         "callback_url": url}, key=KEY_A)
                   for url in (receiver.url(), receiver.url(host="local.test"))]
        for task_id in granted:
            done = await wait_attempts(gateway, task_id, 1)
            assert done.status is DeliveryStatus.DELIVERED

        async with gateway.http.post(
                f"{gateway.url}/api/v1/images/generations", headers=gateway.headers(KEY_B),
                json={"model": "demo-image", "prompt": "x",
                      "callback_url": receiver.url()}) as resp:
            body = await resp.json()
            assert resp.status == 400, body
            assert "loopback" in body["msg"] and "callback_url" in body["msg"]

        task_b = await gateway.submit({"model": "demo-image", "prompt": "x",
                                       "callback_url": receiver.url(host="rebind.test")},
                                      key=KEY_B)
        refused = await wait_attempts(gateway, task_b, 1)
        [attempt] = await gateway.state.store.list_attempts(refused.id)
        assert attempt.status_code is None and attempt.error is not None
        assert "127.0.0.1 is a loopback address" in attempt.error
        assert len(receiver.hits) == 2  # key A's two, none of key B's


async def test_the_admin_api_grants_and_validates_networks(config: dict[str, Any]) -> None:
    admin = {"admin": {"token": "admin-token-0123456789"}}
    async with run_gateway(merge(config, admin)) as gateway:
        auth = {"Authorization": "Bearer admin-token-0123456789"}
        bravo = await gateway.state.store.key_named("bravo")
        assert bravo is not None
        url = f"{gateway.url}/admin/keys/{bravo.id}"
        for bad in (["nope"], "10.0.0.0/8", [1], ["10.0.0.0/8"] * 33):
            async with gateway.http.patch(url, headers=auth,
                                          json={"webhook_allow_networks": bad}) as resp:
                body = await resp.json()
                assert resp.status == 400, (bad, body)
                assert "webhook_allow_networks" in body["error"]
        async with gateway.http.patch(url, headers=auth, json={
                "webhook_allow_networks": ["10.20.3.4/16", "fd12::/16"]}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert body["webhook_allow_networks"] == ["10.20.0.0/16", "fd12::/16"]
        key = await gateway.state.store.get_key(bravo.id)
        assert key is not None
        assert key.limits.webhook_allow_networks == ("10.20.0.0/16", "fd12::/16")
        async with gateway.http.post(f"{gateway.url}/admin/keys", headers=auth, json={
                "name": "carol", "webhook_allow_networks": ["192.168.7.0/24"]}) as resp:
            body = await resp.json()
            assert resp.status == 201, body
            assert body["key"]["webhook_allow_networks"] == ["192.168.7.0/24"]


def test_key_networks_and_relay_bounds_from_config() -> None:
    raw: dict[str, Any] = {"server": {"secret": "0123456789abcdef"},
                           "webhooks": {"max_per_key": 2, "max_attempts_kept": 10},
                           "keys": [{"name": "a", "key": "key-a-0123456",
                                     "webhook_allow_networks": ["10.20.0.0/16"]}]}
    settings = parse_settings(raw, {})
    assert settings.keys[0].webhook_allow_networks == ("10.20.0.0/16",)
    assert (settings.webhooks.max_per_key, settings.webhooks.max_attempts_kept) == (2, 10)
    bad_key = {**raw["keys"][0], "webhook_allow_networks": ["10.20.0.0/33"]}
    with pytest.raises(SettingsError, match=r"keys\[0\]\.webhook_allow_networks\[0\]"):
        parse_settings({**raw, "keys": [bad_key]}, {})
    for name in ("max_per_key", "max_attempts_kept"):
        with pytest.raises(SettingsError, match=f"webhooks.{name}"):
            parse_settings({**raw, "webhooks": {name: 0}}, {})
