"""Waiting on state the test cannot subscribe to (another process, the job table)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0,
                     interval: float = 0.01) -> None:
    """Re-check ``check`` until it holds; fail with TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)
