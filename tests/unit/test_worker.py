"""The worker loop the scheduler and the webhook relay share, driven through the
smallest policy it needs: items due at times on a manual clock, a number of slots."""

from __future__ import annotations

import asyncio

import pytest

from muxproxy.clock import ManualClock, now_ms
from muxproxy.pipeline.worker import WorkerLoop
from tests.support.wait import eventually

SWEEP = 5.0


class Log:
    def __init__(self) -> None:
        self.exceptions: list[str] = []

    def exception(self, event: str, **fields: object) -> None:
        self.exceptions.append(event)


class Queue(WorkerLoop[str, str]):
    """Items due at times (ms); each runs until its gate opens, then answers its name
    in capitals."""

    def __init__(self, clock: ManualClock, log: Log, slots: int = 4) -> None:
        super().__init__(clock, log, name="test", label="test queue", sweep_seconds=SWEEP)
        self.slots = slots
        self.due: dict[str, int] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.ended: list[tuple[str, str]] = []
        self.released: list[str] = []
        self.failures_left = 0

    async def start(self) -> None:
        self._start_loop()

    def add(self, item: str, at: int) -> None:
        self.due[item] = at
        self.gates[item] = asyncio.Event()

    async def _pass(self) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("the store is down")
        now = now_ms(self.clock)
        free = self.slots - len(self._running)
        for item in sorted(i for i, at in self.due.items() if at <= now)[:max(0, free)]:
            del self.due[item]
            self._spawn(item, f"test-{item}")

    async def _next_wake(self) -> int:
        sweep = now_ms(self.clock) + int(SWEEP * 1000)
        if len(self._running) >= self.slots:
            return sweep  # an item's end wakes the loop
        return min([sweep, *self.due.values()])

    async def _execute(self, item: str) -> str:
        self.started.append(item)
        await self.gates[item].wait()
        return item.upper()

    async def _release(self, item: str) -> None:
        self.released.append(item)

    def _finished(self, task: asyncio.Task[str], item: str) -> None:
        self.ended.append((item, "cancelled" if task.cancelled() else task.result()))
        self.wake()


async def waiting_on_timer(clock: ManualClock) -> float:
    """The time the loop sleeps until, once it sleeps."""
    await eventually(lambda: clock.next_wakeup is not None)
    assert clock.next_wakeup is not None
    return clock.next_wakeup


async def test_an_item_runs_when_the_clock_reaches_its_time() -> None:
    clock, log = ManualClock(), Log()
    queue = Queue(clock, log)
    start = clock.now()
    queue.add("a", now_ms(clock) + 2000)
    await queue.start()
    assert await waiting_on_timer(clock) == pytest.approx(start + 2.0, abs=0.001)
    assert queue.started == []
    clock.advance(2.001)  # the timer aims a hair past the due millisecond
    await eventually(lambda: queue.started == ["a"])
    queue.gates["a"].set()
    await eventually(lambda: queue.ended == [("a", "A")])
    await queue.wait_idle()
    await queue.stop()
    assert queue.released == []


async def test_a_wake_up_runs_a_pass_at_once() -> None:
    clock, log = ManualClock(), Log()
    queue = Queue(clock, log)
    await queue.start()
    start = clock.now()
    assert await waiting_on_timer(clock) == pytest.approx(start + SWEEP, abs=0.001)
    queue.add("b", now_ms(clock))
    queue.wake()
    await eventually(lambda: queue.started == ["b"])
    assert clock.now() == start
    queue.gates["b"].set()
    await queue.stop()
    assert queue.ended == [("b", "B")]


async def test_a_failed_pass_is_logged_and_the_loop_looks_again_a_sweep_later() -> None:
    clock, log = ManualClock(), Log()
    queue = Queue(clock, log)
    queue.failures_left = 1
    queue.add("c", now_ms(clock))
    start = clock.now()
    await queue.start()
    assert await waiting_on_timer(clock) == pytest.approx(start + SWEEP, abs=0.001)
    assert log.exceptions == ["test queue pass failed"]
    assert queue.started == []
    clock.advance(SWEEP + 0.001)
    await eventually(lambda: queue.started == ["c"])
    queue.gates["c"].set()
    await queue.stop()
    assert log.exceptions == ["test queue pass failed"]


async def test_items_run_within_the_slots_and_an_end_lets_the_next_in() -> None:
    clock, log = ManualClock(), Log()
    queue = Queue(clock, log, slots=2)
    for item in ("a", "b", "c"):
        queue.add(item, now_ms(clock))
    await queue.start()
    await eventually(lambda: queue.started == ["a", "b"])
    await waiting_on_timer(clock)
    assert queue.started == ["a", "b"]
    queue.gates["a"].set()
    await eventually(lambda: queue.started == ["a", "b", "c"])
    queue.gates["b"].set()
    queue.gates["c"].set()
    await eventually(lambda: len(queue.ended) == 3)
    await queue.wait_idle()
    await queue.stop()
    assert sorted(queue.ended) == [("a", "A"), ("b", "B"), ("c", "C")]


async def test_stop_lets_running_items_finish_within_the_grace() -> None:
    clock, log = ManualClock(), Log()
    queue = Queue(clock, log)
    queue.add("a", now_ms(clock))
    await queue.start()
    await eventually(lambda: queue.started == ["a"])
    stopping = asyncio.create_task(queue.stop(grace_seconds=30))
    await eventually(lambda: queue._stopping)
    assert not stopping.done()
    queue.gates["a"].set()
    await stopping
    assert queue.ended == [("a", "A")]
    assert queue.released == []


async def test_stop_cancels_what_outlives_the_grace_and_hands_it_back() -> None:
    clock, log = ManualClock(), Log()
    queue = Queue(clock, log)
    queue.add("a", now_ms(clock))
    queue.add("b", now_ms(clock))
    await queue.start()
    await eventually(lambda: queue.started == ["a", "b"])
    queue.gates["a"].set()
    await eventually(lambda: queue.ended == [("a", "A")])
    await queue.stop(grace_seconds=0.05)
    assert queue.ended == [("a", "A"), ("b", "cancelled")]
    assert queue.released == ["b"]
    # Stopped: a wake-up claims nothing any more.
    queue.add("d", now_ms(clock))
    queue.wake()
    await asyncio.sleep(0)
    assert queue.started == ["a", "b"]
