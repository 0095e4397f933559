"""Webhook delivery over time, on a ManualClock: the quick phase, the background
phase, the retry window, restarts, and how receiver answers are treated."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from muxproxy.clock import ManualClock
from muxproxy.store.sqlite import SqliteStore
from muxproxy.webhooks.outbox import DeliveryStatus
from tests.support.gateway import KEY_B, RunningGateway, merge, run_gateway
from tests.support.webhooks import (
    LOOPBACK,
    Answer,
    Receiver,
    delivery,
    next_attempt,
    wait_attempts,
)


@pytest.fixture
def hooks(config: dict[str, Any]) -> dict[str, Any]:
    return merge(config, LOOPBACK)


async def submit(gateway: RunningGateway, receiver: Receiver, path: str = "/hook") -> str:
    return await gateway.submit({"model": "demo-image", "prompt": "x",
                                 "callback_url": receiver.url(path)})


async def attempts(gateway: RunningGateway, task_id: str, key: str | None = None
                   ) -> dict[str, Any]:
    async with gateway.http.get(f"{gateway.url}/api/v1/webhooks/deliveries",
                                params={"task_id": task_id},
                                headers=gateway.headers(key) if key else gateway.headers()
                                ) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
    data: dict[str, Any] = body["data"]
    return data


async def scrape(gateway: RunningGateway) -> dict[str, float]:
    async with gateway.http.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def test_third_attempt_after_one_and_two_seconds(hooks: dict[str, Any]) -> None:
    clock = ManualClock()
    async with Receiver(clock) as receiver, run_gateway(hooks, clock=clock) as gateway:
        receiver.script.extend([Answer(500), Answer(503)])
        task_id = await submit(gateway, receiver)
        first = await wait_attempts(gateway, task_id, 1)
        t0 = receiver.hits[0].at
        assert first.status is DeliveryStatus.PENDING and first.last_error == "HTTP 500"
        assert first.next_attempt_at is not None
        # Not a moment early: just short of the due time, nothing happens.
        clock.set(first.next_attempt_at / 1000 - 0.05)
        await asyncio.sleep(0.1)
        assert len(receiver.hits) == 1
        metrics = await scrape(gateway)
        assert metrics["muxproxy_webhook_backlog"] == 1
        assert metrics["muxproxy_webhook_oldest_pending_age_seconds"] >= 0.85
        assert metrics['muxproxy_webhook_attempts_total{result="5xx"}'] == 1

        await next_attempt(gateway, clock, task_id)
        done = await next_attempt(gateway, clock, task_id)

        assert done.status is DeliveryStatus.DELIVERED
        gaps = [hit.at - t0 for hit in receiver.hits]
        assert gaps[1] == pytest.approx(1.0, abs=0.1 + 0.001)
        assert gaps[2] == pytest.approx(3.0, abs=0.3 + 0.002)
        assert len({hit.headers["webhook-id"] for hit in receiver.hits}) == 1
        view = await attempts(gateway, task_id)
        assert [a["statusCode"] for a in view["attempts"]] == [500, 503, 200]
        assert [a["attempt"] for a in view["attempts"]] == [1, 2, 3]
        assert [a["time"] for a in view["attempts"]] == [int(h.at * 1000)
                                                         for h in receiver.hits]
        metrics = await scrape(gateway)
        assert metrics["muxproxy_webhook_backlog"] == 0
        assert metrics['muxproxy_webhook_deliveries_total{outcome="delivered"}'] == 1
        assert metrics["muxproxy_webhook_delivery_latency_seconds_count"] == 1
        assert metrics["muxproxy_webhook_attempt_duration_seconds_count"] == 3


async def test_a_receiver_down_through_the_quick_phase_gets_it_in_the_background(
        hooks: dict[str, Any]) -> None:
    clock = ManualClock()
    receiver = Receiver(clock)
    receiver.bind()  # the port is ours but nothing listens: connections are refused
    try:
        async with run_gateway(hooks, clock=clock) as gateway:
            task_id = await submit(gateway, receiver)
            start = (await wait_attempts(gateway, task_id, 1)).updated_at
            for _ in range(2):
                await next_attempt(gateway, clock, task_id)
            quick = await delivery(gateway, task_id)
            assert quick.status is DeliveryStatus.PENDING and quick.attempts == 3
            assert quick.last_error == "connect_error: connection refused"
            await receiver.listen()
            done = await next_attempt(gateway, clock, task_id)
            assert done.status is DeliveryStatus.DELIVERED
            [hit] = receiver.hits
            assert hit.at - start / 1000 == pytest.approx(7.0, abs=0.7 + 0.003)  # 1 + 2 + 4 s
            assert hit.headers["webhook-id"] == done.id
    finally:
        await receiver.close()


async def test_undelivered_past_the_window_then_redelivered(hooks: dict[str, Any]) -> None:
    clock = ManualClock()
    receiver = Receiver(clock)
    receiver.bind()
    try:
        async with run_gateway(hooks, clock=clock) as gateway:
            task_id = await submit(gateway, receiver)
            current = await wait_attempts(gateway, task_id, 1)
            first_at = current.updated_at
            while current.status is DeliveryStatus.PENDING:
                assert current.attempts < 40
                current = await next_attempt(gateway, clock, task_id)
            assert current.status is DeliveryStatus.FAILED
            view = await attempts(gateway, task_id)
            assert view["status"] == "failed" and view["nextAttemptTime"] is None
            assert view["lastError"].startswith("gave up: no 2xx within the 1800 s retry window")
            times = [a["time"] for a in view["attempts"]]
            assert len(times) >= 10 and times[-1] == first_at + 1_800_000
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert max(gaps) <= 330_000  # background intervals grow up to 300 s (+jitter)
            assert all(a["error"] == "connect_error: connection refused"
                       for a in view["attempts"])

            clock.advance(3600)
            await asyncio.sleep(0.1)
            assert (await delivery(gateway, task_id)).attempts == len(times)

            await receiver.listen()
            async with gateway.http.post(f"{gateway.url}/api/v1/webhooks/redeliver",
                                         json={"task_id": task_id},
                                         headers=gateway.headers(KEY_B)) as resp:
                assert resp.status == 404
            async with gateway.http.post(f"{gateway.url}/api/v1/webhooks/redeliver",
                                         json={"task_id": task_id},
                                         headers=gateway.headers()) as resp:
                assert resp.status == 200
                assert (await resp.json())["data"]["status"] == "pending"
            [hit] = await receiver.wait_hits(1)
            await wait_attempts(gateway, task_id, len(times) + 1)
            view = await attempts(gateway, task_id)
            assert view["status"] == "delivered" and view["lastError"] is None
            assert hit.headers["webhook-id"] == view["webhookId"]
            assert hit.json["data"]["taskId"] == task_id
    finally:
        await receiver.close()


async def test_pending_deliveries_survive_a_restart(hooks: dict[str, Any]) -> None:
    clock = ManualClock()
    async with Receiver(clock) as receiver:
        receiver.default = Answer(503)
        async with run_gateway(hooks, clock=clock) as gateway:
            tasks = [await submit(gateway, receiver, f"/t{i}") for i in range(3)]
            for task_id in tasks:
                await wait_attempts(gateway, task_id, 1)
        # A process that died mid-attempt leaves a lease behind (an attempt's timeout
        # plus the margin): it must not strand a row once it lapses.
        store = SqliteStore(hooks["database"]["url"].removeprefix("sqlite:///"))
        await store.open()
        try:
            now = int(clock.now() * 1000) + 10_000
            assert len(await store.claim_deliveries(now, 1, "crashed:1:dead", now + 40_000)) == 1
        finally:
            await store.aclose()
        receiver.default = Answer(200)
        clock.advance(60)
        async with run_gateway(hooks, clock=clock) as gateway:
            for task_id in tasks:
                done = await wait_attempts(gateway, task_id, 2)
                assert done.status is DeliveryStatus.DELIVERED
        by_path: dict[str, set[str]] = {}
        for hit in receiver.hits:
            by_path.setdefault(hit.path, set()).add(hit.headers["webhook-id"])
        assert sorted(by_path) == ["/t0", "/t1", "/t2"]
        assert all(len(ids) == 1 for ids in by_path.values())  # same id before and after


async def test_an_attempt_cut_short_by_shutdown_is_sent_again(
        hooks: dict[str, Any]) -> None:
    clock = ManualClock()
    config = merge(hooks, {"server": {"graceful_shutdown_seconds": 0.2}})
    async with Receiver(clock) as receiver:
        receiver.script.append(Answer(hang=True))
        async with run_gateway(config, clock=clock) as gateway:
            task_id = await submit(gateway, receiver)
            await receiver.wait_hits(1)
        # Stopped mid-attempt: nothing recorded, the lease handed back.
        store = SqliteStore(hooks["database"]["url"].removeprefix("sqlite:///"))
        await store.open()
        try:
            left = await store.get_delivery(task_id)
            assert left is not None and left.attempts == 0 and left.lease_owner is None
        finally:
            await store.aclose()
        async with run_gateway(config, clock=clock) as gateway:
            done = await wait_attempts(gateway, task_id, 1)
            assert done.status is DeliveryStatus.DELIVERED
        first, second = receiver.hits
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == done.id


async def test_redirects_are_failures_and_not_followed(hooks: dict[str, Any]) -> None:
    clock = ManualClock()
    async with Receiver(clock) as receiver, run_gateway(hooks, clock=clock) as gateway:
        receiver.script.append(Answer(302, headers={"Location": receiver.url("/elsewhere")}))
        task_id = await submit(gateway, receiver)
        first = await wait_attempts(gateway, task_id, 1)
        assert first.status is DeliveryStatus.PENDING and first.last_error == "HTTP 302"
        done = await next_attempt(gateway, clock, task_id)
        assert done.status is DeliveryStatus.DELIVERED
        assert [hit.path for hit in receiver.hits] == ["/hook", "/hook"]


async def test_410_gone_stops_retrying(hooks: dict[str, Any]) -> None:
    clock = ManualClock()
    async with Receiver(clock) as receiver, run_gateway(hooks, clock=clock) as gateway:
        receiver.default = Answer(410, body=b"endpoint removed")
        task_id = await submit(gateway, receiver)
        gone = await wait_attempts(gateway, task_id, 1)
        assert gone.status is DeliveryStatus.FAILED and gone.next_attempt_at is None
        assert gone.last_error == "the receiver answered 410 Gone: not retrying"
        clock.advance(3600)
        await asyncio.sleep(0.1)
        assert len(receiver.hits) == 1
        view = await attempts(gateway, task_id)
        assert view["attempts"][0]["response"] == "endpoint removed"
        metrics = await scrape(gateway)
        assert metrics['muxproxy_webhook_deliveries_total{outcome="gone"}'] == 1


async def test_retry_after_is_honoured_within_bounds(hooks: dict[str, Any]) -> None:
    clock = ManualClock()
    async with Receiver(clock) as receiver, run_gateway(hooks, clock=clock) as gateway:
        receiver.script.extend([Answer(429, headers={"Retry-After": "20"}),
                                Answer(503, headers={"Retry-After": "86400"})])
        task_id = await submit(gateway, receiver)
        first = await wait_attempts(gateway, task_id, 1)
        assert first.next_attempt_at is not None
        wait = first.next_attempt_at - round(receiver.hits[0].at * 1000)
        assert 20_000 <= wait <= 22_000  # asked 20 s, not the scheduled 1 s
        second = await next_attempt(gateway, clock, task_id)
        assert second.next_attempt_at is not None
        wait = second.next_attempt_at - round(receiver.hits[1].at * 1000)
        assert 300_000 <= wait <= 330_000  # asked a day, capped at retry_after_max_seconds
        done = await next_attempt(gateway, clock, task_id)
        assert done.status is DeliveryStatus.DELIVERED


async def test_a_hanging_receiver_times_out_without_holding_up_others(
        hooks: dict[str, Any]) -> None:
    clock = ManualClock()
    config = merge(hooks, {"webhooks": {"attempt_timeout_seconds": 0.5, "max_per_host": 1}})
    async with Receiver(clock) as slow, Receiver(clock) as fast, \
            run_gateway(config, clock=clock) as gateway:
        slow.default = Answer(hang=True)
        stuck = [await submit(gateway, slow), await submit(gateway, slow)]
        await slow.wait_hits(1)
        # The pipeline and other receivers carry on while the first attempt hangs.
        quick = await submit(gateway, fast)
        assert (await gateway.wait_terminal(quick))["state"] == "completed"
        done = await wait_attempts(gateway, quick, 1)
        assert done.status is DeliveryStatus.DELIVERED
        assert len(slow.hits) == 1  # max_per_host = 1: the second waits its turn
        assert (await delivery(gateway, stuck[0])).attempts == 0

        timed_out = await wait_attempts(gateway, stuck[0], 1)
        [attempt] = await gateway.state.store.list_attempts(timed_out.id)
        assert attempt.status_code is None
        assert attempt.error == "timeout: no response within 0.5 s"
        assert 500 <= attempt.latency_ms < 2_000
        assert timed_out.status is DeliveryStatus.PENDING
        await slow.wait_hits(2)  # the host's slot went to the next delivery
