"""The notifiers of databases several processes share: which changes are signalled
(committed ones only) and that every listener hears them, on PostgreSQL
(LISTEN/NOTIFY) and on a SQLite file (rows its triggers write); and that a
PostgreSQL listener whose connection is killed comes back and tells its handlers
that anything may have changed meanwhile."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from muxproxy.clock import SystemClock
from muxproxy.notify import EVERY, Signal
from muxproxy.notify.postgres import APPLICATION_NAME, PostgresNotifier
from muxproxy.notify.sqlite import SqliteNotifier
from muxproxy.pipeline.jobs import JobState, Lease
from muxproxy.store import InsufficientBalance, KeyLimits, Store
from muxproxy.store.postgres import PostgresStore
from muxproxy.store.sqlite import SqliteStore
from tests.contract.test_store_contract import OWNER, T0, claim_one, new_job
from tests.support.postgres import fresh_database

Heard = asyncio.Queue[tuple[Signal, str]]


class Listener:
    def __init__(self, notifier: PostgresNotifier | SqliteNotifier) -> None:
        self.notifier = notifier
        self.heard: Heard = asyncio.Queue()
        for signal in Signal:
            self.notifier.subscribe(signal, self._hearing(signal))

    def _hearing(self, signal: Signal) -> Callable[[str], None]:
        return lambda subject: self.heard.put_nowait((signal, subject))

    async def next(self) -> tuple[Signal, str]:
        async with asyncio.timeout(10):
            return await self.heard.get()


@asynccontextmanager
async def listening(make: Callable[[], PostgresNotifier | SqliteNotifier]
                    ) -> AsyncIterator[list[Listener]]:
    two = [Listener(make()), Listener(make())]
    for listener in two:
        await listener.notifier.start()
    try:
        yield two
    finally:
        for listener in two:
            await listener.notifier.aclose()


@pytest.fixture
async def listeners(pg: PostgresStore, postgres_url: str) -> AsyncIterator[list[Listener]]:
    async with listening(lambda: PostgresNotifier(postgres_url, SystemClock())) as two:
        yield two


@pytest.fixture(params=["sqlite", "postgres"])
async def shared(request: pytest.FixtureRequest, tmp_path: Path
                 ) -> AsyncIterator[tuple[Store, list[Listener]]]:
    """A store and two listeners on one database, as two other processes would be."""
    make: Callable[[], PostgresNotifier | SqliteNotifier]
    store: Store
    async with AsyncExitStack() as stack:
        if request.param == "postgres":
            request.getfixturevalue("postgres_server")
            url = await stack.enter_async_context(fresh_database())
            store = PostgresStore(url, pool_size=4)
            make = functools.partial(PostgresNotifier, url, SystemClock())
        else:
            path = tmp_path / "shared.db"
            store = SqliteStore(path)
            store.expect_other_processes()
            make = functools.partial(SqliteNotifier, str(path), poll_seconds=0.005)
        await store.open()
        stack.push_async_callback(store.aclose)
        yield store, await stack.enter_async_context(listening(make))


async def test_committed_changes_are_signalled_to_every_listener(
        shared: tuple[Store, list[Listener]]) -> None:
    pg, listeners = shared
    one, other = listeners
    key = await pg.create_key("team", "digest", now=T0)  # no credits: no ledger row
    # Created leased (this process runs it): nobody else needs waking.
    await pg.create_job(replace(new_job("leased", provider="here"),
                                lease=Lease(OWNER, T0 + 60_000)))
    # Refused (the hold finds no credits): the insert is rolled back, unheard.
    with pytest.raises(InsufficientBalance):
        await pg.create_job(new_job("refused", key_id=key.id, provider="poor", credits=5))
    await pg.create_job(new_job("queued", provider="demo"))
    for listener in listeners:
        assert await listener.next() == (Signal.JOB_QUEUED, "demo")

    job = await claim_one(pg, "queued")
    job = await pg.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0, owner=OWNER,
                              release=False)
    await pg.transition(job, JobState.PROCESSING, JobState.COMPLETED, now=T0, owner=OWNER)
    for listener in listeners:
        assert await listener.next() == (Signal.JOB_ENDED, "queued")

    # The balance alone (a hold, a charge) is not a change of the key; credits given
    # or taken back, limits and revocation are; writing the same limits is not.
    await pg.topup(key.id, 10, now=T0)
    assert await one.next() == (Signal.KEY_CHANGED, key.id)
    await pg.create_job(new_job("priced", key_id=key.id, provider="paid", credits=5))
    assert await one.next() == (Signal.JOB_QUEUED, "paid")
    await pg.update_key(key.id, KeyLimits(rpm_limit=3))
    assert await one.next() == (Signal.KEY_CHANGED, key.id)
    await pg.update_key(key.id, KeyLimits(rpm_limit=3))
    await pg.revoke_key(key.id, now=T0)
    await pg.topup(key.id, -1, now=T0)
    assert [await one.next() for _ in range(2)] == [(Signal.KEY_CHANGED, key.id)] * 2
    await pg.create_job(new_job("marker", provider="last"))
    assert await one.next() == (Signal.JOB_QUEUED, "last")
    assert one.heard.empty()
    # The other listener heard the same, in the same order.
    assert [await other.next() for _ in range(6)] == [
        (Signal.KEY_CHANGED, key.id), (Signal.JOB_QUEUED, "paid"),
        (Signal.KEY_CHANGED, key.id), (Signal.KEY_CHANGED, key.id),
        (Signal.KEY_CHANGED, key.id), (Signal.JOB_QUEUED, "last")]


async def test_a_listener_whose_connection_dies_comes_back_and_says_so(
        pg: PostgresStore, listeners: list[Listener], postgres_url: str) -> None:
    one, other = listeners
    admin = await asyncpg.connect(postgres_url)
    try:
        killed = await admin.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
            "application_name = $1 AND datname = current_database() AND pid = ANY($2::int[])",
            APPLICATION_NAME, [_backend_pid(listener_of(one))])
        assert killed is True
    finally:
        await admin.close()
    # Back, it tells every handler that anything may have changed while it was away.
    assert sorted([await one.next() for _ in Signal]) == sorted((s, EVERY) for s in Signal)
    await pg.create_job(new_job("after", provider="demo"))
    assert await one.next() == (Signal.JOB_QUEUED, "demo")
    assert await other.next() == (Signal.JOB_QUEUED, "demo")  # never lost its own


def listener_of(listener: Listener) -> PostgresNotifier:
    assert isinstance(listener.notifier, PostgresNotifier)
    return listener.notifier


def _backend_pid(notifier: PostgresNotifier) -> int:
    conn = notifier._conn
    assert conn is not None
    return conn.get_server_pid()
