"""A SQLite file several processes of one host share (``serve --workers N``): the
signals its triggers write only while some process listens, their clean-up, one rate
bucket per key for every process, and processes that start together on a new file.
The processes are played by stores and notifiers of their own on one file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from muxproxy.notify import Signal
from muxproxy.notify.sqlite import KEEP_MS, SqliteNotifier
from muxproxy.store.schema import MIGRATIONS
from muxproxy.store.sqlite import LISTENER_GONE_MS, SqliteStore
from tests.contract.test_store_contract import T0, new_job
from tests.support.wait import eventually


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


async def opened(path: Path, *, shared: bool = True) -> SqliteStore:
    store = SqliteStore(path)
    if shared:
        store.expect_other_processes()
    await store.open()
    return store


async def test_a_gateway_alone_on_its_file_writes_no_signals(tmp_path: Path) -> None:
    path = tmp_path / "alone.db"
    store = await opened(path, shared=False)
    try:
        await store.create_job(new_job("alone"))
        assert rows(path, "SELECT COUNT(*) FROM signals") == [(0,)]
        notifier = SqliteNotifier(str(path))
        await notifier.start()  # a listener now: the next change is written
        await store.create_job(new_job("heard"))
        assert rows(path, "SELECT channel, subject FROM signals") == [
            (Signal.JOB_QUEUED.value, "demo")]
        await notifier.aclose()  # gone: its row with it, and the writing stops
        await store.create_job(new_job("after"))
        assert rows(path, "SELECT COUNT(*) FROM signal_listeners") == [(0,)]
        assert rows(path, "SELECT COUNT(*) FROM signals") == [(1,)]
    finally:
        await store.aclose()


async def test_signals_of_a_listener_that_died_are_cleared_by_the_next_start(
        tmp_path: Path) -> None:
    path = tmp_path / "died.db"
    store = await opened(path)
    await store.aclose()
    now = int(time.time() * 1000)
    with sqlite3.connect(path) as db:  # a worker killed outright left its row behind
        db.execute("INSERT INTO signal_listeners VALUES ('killed', ?)",
                   (now - LISTENER_GONE_MS - 1000,))
        db.execute("INSERT INTO signal_listeners VALUES ('alive', ?)", (now,))
        db.execute("INSERT INTO signals (channel, subject) VALUES ('muxproxy_job_queued', 'x')")
    store = await opened(path)
    await store.aclose()
    assert rows(path, "SELECT owner FROM signal_listeners") == [("alive",)]
    assert rows(path, "SELECT COUNT(*) FROM signals") == [(1,)]  # alive may not have read it
    with sqlite3.connect(path) as db:
        db.execute("UPDATE signal_listeners SET alive_at = ?", (now - LISTENER_GONE_MS - 1,))
    store = await opened(path)
    await store.aclose()
    assert rows(path, "SELECT COUNT(*) FROM signal_listeners") == [(0,)]
    assert rows(path, "SELECT COUNT(*) FROM signals") == [(0,)]  # nobody left to read them


async def test_listeners_renew_themselves_and_delete_what_all_have_read(
        tmp_path: Path) -> None:
    path = tmp_path / "kept.db"
    store = await opened(path)
    heard: asyncio.Queue[str] = asyncio.Queue()
    notifier = SqliteNotifier(str(path), poll_seconds=0.005, keep_alive_seconds=0.01)
    notifier.subscribe(Signal.JOB_ENDED, heard.put_nowait)
    await notifier.start()
    try:
        now = int(time.time() * 1000)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE signal_listeners SET alive_at = ?", (now - 10_000,))
            db.execute("INSERT INTO signals (channel, subject, at) VALUES "
                       "('muxproxy_job_ended', 'old', ?), ('muxproxy_job_ended', 'new', ?)",
                       (now - KEEP_MS - 1000, now))
        async with asyncio.timeout(10):
            assert {await heard.get(), await heard.get()} == {"old", "new"}
        await eventually(lambda: rows(path, "SELECT alive_at FROM signal_listeners")[0][0]
                         != now - 10_000, timeout=10)
        # Deleted in the same renewal: the signal older than KEEP_MS, not the new one.
        assert rows(path, "SELECT subject FROM signals") == [("new",)]
    finally:
        await notifier.aclose()
        await store.aclose()


async def test_a_listener_that_cannot_read_says_so_until_it_can_again(
        tmp_path: Path) -> None:
    path = tmp_path / "unread.db"
    store = await opened(path)
    heard: asyncio.Queue[str] = asyncio.Queue()
    notifier = SqliteNotifier(str(path), poll_seconds=0.005)
    notifier.subscribe(Signal.JOB_ENDED, heard.put_nowait)
    assert notifier.listening is False  # not started
    await notifier.start()
    try:
        assert notifier.listening is True
        with sqlite3.connect(path) as db:  # its reads now fail: no such table
            db.execute("ALTER TABLE signals RENAME TO signals_away")
        await eventually(lambda: notifier.listening is False)
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE signals_away RENAME TO signals")
            db.execute("INSERT INTO signals (channel, subject) VALUES "
                       "('muxproxy_job_ended', 'back')")
        async with asyncio.timeout(10):
            assert await heard.get() == "back"
        assert notifier.listening is True
    finally:
        await notifier.aclose()
        await store.aclose()
    assert notifier.listening is False


async def test_every_process_takes_from_one_bucket_per_key(tmp_path: Path) -> None:
    path = tmp_path / "rates.db"
    stores = [await opened(path), await opened(path)]
    try:
        taken = await asyncio.gather(*(stores[i % 2].take_request("key-a", 10, T0)
                                       for i in range(14)))
        assert taken.count(None) == 10  # not ten each
        assert all(t == pytest.approx(6.0) for t in taken if t is not None)
        assert await stores[1].take_request("key-a", 10, T0 + 6000) is None  # one refilled
    finally:
        for store in stores:
            await store.aclose()


async def test_processes_starting_together_on_a_new_file_migrate_it_once(
        tmp_path: Path) -> None:
    # Each start races the others to switch the file to WAL and to migrate it; the
    # loser of a race saw "database is locked" about once in 40 opens: 40 new files.
    for attempt in range(40):
        path = tmp_path / f"new-{attempt}.db"
        stores = [SqliteStore(path) for _ in range(4)]
        opened_all = await asyncio.gather(*(store.open() for store in stores),
                                          return_exceptions=True)
        try:
            assert [o for o in opened_all if o is not None] == []
            assert rows(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
            assert rows(path, "PRAGMA journal_mode") == [("wal",)]
            await stores[3].create_job(new_job("works"))
            assert await stores[0].get_job("works") is not None
        finally:
            for store in stores:
                await store.aclose()
