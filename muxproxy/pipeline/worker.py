"""The background worker loop that the scheduler and the webhook relay share.

The loop is "wait for a wake-up, a timer or stop". A pass claims what is due within
the worker's slots and runs each item as its own task; then the loop sleeps until
the time the worker names (the next item due, or a sweep), until :meth:`wake`, or
until :meth:`stop`. Every pass logs its exception and carries on. On stop, running
items get a grace period, then are cancelled and their leases handed back, so the
next start takes them up.

A worker supplies the policy: what a pass claims (:meth:`WorkerLoop._pass`), when
to look again (``_next_wake``), how one item runs (``_execute``), how its lease is
handed back (``_release``) and what an item's end frees (``_finished``). Time is the
app's :class:`~muxproxy.clock.Clock`, so tests drive the timers with a ManualClock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

from muxproxy.clock import Clock, now_ms

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


def new_owner() -> str:
    """A name for this process's leases: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


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


class WorkerLoop(ABC, Generic[ItemT, ResultT]):
    """Claims items in passes and runs each as a task, under one lease ``owner``."""

    def __init__(self, clock: Clock, log: Any, *, name: str, label: str,
                 sweep_seconds: float) -> None:
        self.clock = clock
        self.owner = new_owner()
        self._log = log
        self._name = name  # of the loop's task: muxproxy-<name>
        self._label = label  # for the log: "<label> pass failed"
        # After a failed pass, the loop looks again this much later.
        self._sweep_seconds = sweep_seconds
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.Task[None] | None = None
        self._running: dict[asyncio.Task[ResultT], ItemT] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def wake(self) -> None:
        self._wake.set()

    async def wait_idle(self) -> None:
        """Return once no item runs here."""
        await self._idle.wait()

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming; give running items ``grace_seconds``, then cancel them and
        hand their leases back so the next start takes them up."""
        self._stopping = True
        self._wake.set()
        if self._loop is not None:
            await self._loop
        if self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_seconds):
                    await self._idle.wait()
        leftovers = list(self._running.items())
        for task, _ in leftovers:
            task.cancel()
        await asyncio.gather(*(t for t, _ in leftovers), return_exceptions=True)
        for _, item in leftovers:
            await self._release(item)

    def _start_loop(self) -> None:
        self._loop = asyncio.create_task(self._run(), name=f"muxproxy-{self._name}")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._pass()
                wake_at = await self._next_wake()
            except Exception:
                self._log.exception(f"{self._label} pass failed")
                wake_at = now_ms(self.clock) + int(self._sweep_seconds * 1000)
            await wait_for_wake(self._wake, self.clock, wake_at)

    def _spawn(self, item: ItemT, task_name: str) -> None:
        """Run ``item`` as a task; the worker has counted it against its slots."""
        self._idle.clear()
        task = asyncio.create_task(self._execute(item), name=task_name)
        self._running[task] = item
        task.add_done_callback(lambda t: self._done(t, item))

    def _done(self, task: asyncio.Task[ResultT], item: ItemT) -> None:
        self._running.pop(task, None)
        if not self._running:
            self._idle.set()
        self._finished(task, item)

    @abstractmethod
    async def _pass(self) -> None:
        """Claim what is due within the free slots and :meth:`_spawn` each item."""

    @abstractmethod
    async def _next_wake(self) -> int:
        """When (ms on the clock) the next pass is due, unless woken sooner."""

    @abstractmethod
    async def _execute(self, item: ItemT) -> ResultT:
        """Run one item; an exception it lets out ends only its own task."""

    @abstractmethod
    async def _release(self, item: ItemT) -> None:
        """Hand back the lease of an item cancelled on stop."""

    @abstractmethod
    def _finished(self, task: asyncio.Task[ResultT], item: ItemT) -> None:
        """An item's task ended (done, failed or cancelled): free its slots."""
