"""The background loops' wait: for a wake-up event or a point in time, whichever
comes first."""

from __future__ import annotations

import asyncio

from muxproxy.clock import Clock, now_ms


async def sleep_until(clock: Clock, when_ms: int) -> None:
    """Sleep until ``clock`` reads ``when_ms``.

    Measured when the timer starts, not when the caller computed ``when_ms``: a
    clock that moved in between (a test's ManualClock) must not push the wake-up
    back. Due means due in whole milliseconds, as the stores compare them: aim a
    hair past the boundary so float rounding cannot wake us just short of it.
    """
    while now_ms(clock) < when_ms:
        await clock.sleep(when_ms / 1000 + 0.0001 - clock.now())


async def wait_for_wake(wake: asyncio.Event, clock: Clock, when_ms: int) -> None:
    """Return when ``wake`` is set or ``clock`` reaches ``when_ms``; clear ``wake``."""
    if wake.is_set() or when_ms <= now_ms(clock):
        wake.clear()
        await asyncio.sleep(0)
        return
    waiter = asyncio.ensure_future(wake.wait())
    timer = asyncio.ensure_future(sleep_until(clock, when_ms))
    try:
        await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        timer.cancel()
        wake.clear()
