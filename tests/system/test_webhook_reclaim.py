"""A callback retry that falls due while the relay is claiming is sent, even when the
attempt before it was still running as that pass began (the pass must not take its
own old view of "in flight" for the truth, or the retry stays leased and unsent)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import web

from muxproxy.clock import ManualClock, now_ms
from muxproxy.store.sqlite import SqliteStore
from muxproxy.webhooks.outbox import Delivery
from tests.support.gateway import RunningGateway, merge, run_gateway
from tests.support.webhooks import LOOPBACK, until, wait_attempts


async def test_a_retry_due_during_a_claim_is_sent(config: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    running: list[RunningGateway] = []
    hits: list[int] = []
    hold_next_claim = asyncio.Event()

    async def receiver(request: web.Request) -> web.Response:
        hits.append(len(hits) + 1)
        if len(hits) > 1:
            return web.Response(text="ok")
        # While this first attempt is in flight, the relay starts another pass.
        hold_next_claim.set()
        running[0].state.relay.wake()
        await asyncio.sleep(0.05)
        return web.Response(status=503, text="busy")

    claim = SqliteStore.claim_deliveries

    async def claim_late(self: SqliteStore, now: int, limit: int, owner: str,
                         lease_until: int, skip_hosts: Sequence[str] = (),
                         skip_keys: Sequence[str] = ()) -> list[Delivery]:
        if hold_next_claim.is_set():
            hold_next_claim.clear()
            # The pass began with the attempt in flight; by the time its claim runs
            # the attempt is recorded, its task finished, and the retry is due.
            metrics = running[0].state.metrics.registry
            await until(lambda: metrics.get_sample_value("muxproxy_webhooks_in_flight") == 0, 3)
            [pending] = [d for d in [await self.get_delivery(task_ids[0])] if d]
            assert pending.next_attempt_at is not None
            clock.set(pending.next_attempt_at / 1000 + 0.001)
            now, lease_until = now_ms(clock), now_ms(clock) + 60_000
        return await claim(self, now, limit, owner, lease_until, skip_hosts, skip_keys)

    monkeypatch.setattr(SqliteStore, "claim_deliveries", claim_late)
    app = web.Application()
    app.router.add_post("/hook", receiver)
    server = web.AppRunner(app, access_log=None)
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    task_ids: list[str] = []
    try:
        async with run_gateway(merge(config, LOOPBACK), clock=clock) as gateway:
            running.append(gateway)
            task_ids.append(await gateway.submit({
                "model": "demo-image", "prompt": "x",
                "callback_url": f"http://127.0.0.1:{port}/hook"}))
            # The clock stands still from here: a retry left leased would never go.
            found = await wait_attempts(gateway, task_ids[0], 2, timeout=3)
            assert found.status.value == "delivered"
            assert len(hits) == 2
    finally:
        await server.cleanup()
