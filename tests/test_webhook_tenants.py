"""One tenant cannot degrade the others' callbacks: relay slots per key, bounded
redelivery, and private networks granted to one key only."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import pytest

from tests.support.gateway import KEY_A, KEY_B, merge, run_gateway
from tests.support.webhooks import LOOPBACK, Receiver, SilentReceiver, until


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
