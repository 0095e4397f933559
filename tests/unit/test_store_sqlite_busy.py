"""The SQLite store runs its busy statements on the event loop; a write lock held by
another process must not stall the loop: that write waits off the loop instead."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from muxproxy.store.sqlite import SqliteStore
from tests.contract.test_store_contract import new_job


async def test_write_waits_off_the_loop_while_another_process_holds_the_lock(
        tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        await store.create_job(new_job("before"))
        other.execute("BEGIN IMMEDIATE")  # as `muxproxy keys` or a sqlite3 shell would
        write = asyncio.create_task(store.create_job(new_job("during")))
        started = time.monotonic()
        for _ in range(5):  # the loop keeps turning, and reads still answer
            await asyncio.sleep(0.01)
            assert await store.get_job("before") is not None
        assert time.monotonic() - started < 1.0
        assert not write.done()
        other.execute("COMMIT")
        job = await asyncio.wait_for(write, 5)
        assert (await store.get_job("during")) == job
        await store.create_job(new_job("after"))  # back on the fast path
    finally:
        other.close()
        await store.aclose()
