"""What only the PostgreSQL backend does: migrations under an advisory lock, the
database's own refusals, claims from several processes, and its faults mapped."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from muxproxy.errors import StoreUnavailable
from muxproxy.pipeline.jobs import JobState
from muxproxy.store.pg_schema import PG_MIGRATIONS
from muxproxy.store.postgres import PostgresStore
from muxproxy.store.postgres_migrate import SchemaTooNew
from muxproxy.store.postgres_tx import PostgresTx
from muxproxy.store.schema import MIGRATIONS
from muxproxy.store.tx import Tx
from tests.contract.test_store_contract import OWNER, T0, claim_one, new_job
from tests.support.wait import eventually

T = TypeVar("T")


async def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    replicas = [PostgresStore(postgres_url, pool_size=2) for _ in range(3)]
    await asyncio.gather(*(r.open() for r in replicas))
    try:
        db = await asyncpg.connect(postgres_url)
        try:
            versions = [r["version"] for r in
                        await db.fetch("SELECT version FROM schema_version ORDER BY version")]
        finally:
            await db.close()
        assert versions == list(range(1, len(PG_MIGRATIONS) + 1))
        await replicas[0].create_job(new_job("j1"))
        assert [await r.get_job("j1") is not None for r in replicas] == [True] * 3
    finally:
        await asyncio.gather(*(r.aclose() for r in replicas))


async def test_a_database_newer_than_the_code_is_refused(pg: PostgresStore,
                                                         postgres_url: str) -> None:
    db = await asyncpg.connect(postgres_url)
    try:
        await db.execute("INSERT INTO schema_version (version) VALUES ($1)",
                         len(PG_MIGRATIONS) + 1)
    finally:
        await db.close()
    with pytest.raises(SchemaTooNew, match=r"newer than this muxproxy.*upgrade muxproxy"):
        await PostgresStore(postgres_url).open()


async def test_the_trigger_refuses_an_illegal_transition_in_raw_sql(
        pg: PostgresStore, postgres_url: str) -> None:
    await pg.create_job(new_job("j1"))
    job = await claim_one(pg, "j1")
    await pg.transition(job, JobState.PENDING, JobState.FAILED, now=T0, owner=OWNER)
    db = await asyncpg.connect(postgres_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="illegal transition"):
            await db.execute("UPDATE jobs SET state = 'processing' WHERE id = 'j1'")
        with pytest.raises(asyncpg.CheckViolationError, match="illegal transition"):
            await db.execute("UPDATE jobs SET fail_msg = 'rewritten' WHERE id = 'j1'")
        await pg.create_job(new_job("j2"))
        with pytest.raises(asyncpg.CheckViolationError, match="illegal transition"):
            await db.execute("UPDATE jobs SET state = 'completed' WHERE id = 'j2'")
        with pytest.raises(asyncpg.UniqueViolationError, match="ledger_once_per_job"):
            await db.execute(
                "INSERT INTO api_keys (id, name, key_hash, created_at) VALUES ('k', 'k', 'h', 0);"
                "INSERT INTO ledger (key_id, kind, amount, job_id, created_at) "
                "VALUES ('k', 'hold', -1, 'j2', 0), ('k', 'hold', -1, 'j2', 0)")
    finally:
        await db.close()
    stored = await pg.get_job("j1")
    assert stored is not None and stored.state is JobState.FAILED


async def test_two_stores_claiming_at_once_never_take_one_job_twice(
        pg: PostgresStore, postgres_url: str) -> None:
    other = PostgresStore(postgres_url, pool_size=4)
    await other.open()
    try:
        for i in range(120):
            await pg.create_job(new_job(f"j{i:03}", created=T0 + i))
        stores = [(pg, "replica-a"), (other, "replica-b")]
        rounds = [store.claim_due("demo", T0 + 1000, 7, owner, T0 + 60_000)
                  for _ in range(8) for store, owner in stores]
        claimed = [job for batch in await asyncio.gather(*rounds) for job in batch]
        ids = [job.id for job in claimed]
        assert len(ids) == len(set(ids))
        assert {job.lease_owner for job in claimed} == {"replica-a", "replica-b"}
        rest = await other.claim_due("demo", T0 + 1000, 200, "replica-b", T0 + 60_000)
        assert sorted(ids + [job.id for job in rest]) == [f"j{i:03}" for i in range(120)]
    finally:
        await other.aclose()


async def test_a_lapsed_lease_is_claimed_by_another_replica(
        pg: PostgresStore, postgres_url: str) -> None:
    other = PostgresStore(postgres_url, pool_size=2)
    await other.open()
    try:
        await pg.create_job(new_job("late", created=T0 + 5))
        await pg.create_job(new_job("early", created=T0))
        taken = await pg.claim_due("demo", T0 + 10, 1, "replica-a", T0 + 1000)
        assert [j.id for j in taken] == ["early"]
        assert [j.id for j in await other.claim_due("demo", T0 + 999, 5, "replica-b",
                                                    T0 + 5000)] == ["late"]
        again = await other.claim_due("demo", T0 + 1000, 5, "replica-b", T0 + 5000)
        assert [(j.id, j.lease_owner, j.lease_until) for j in again] == \
            [("early", "replica-b", T0 + 5000)]
    finally:
        await other.aclose()


async def test_a_statement_timeout_is_store_unavailable(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, pool_size=2, statement_timeout_seconds=0.2)
    await store.open()
    try:
        await store.create_job(new_job("j1"))
        job = await claim_one(store, "j1")
        locker = await asyncpg.connect(postgres_url)
        try:
            async with locker.transaction():
                await locker.execute("SELECT 1 FROM jobs WHERE id = 'j1' FOR UPDATE")
                with pytest.raises(StoreUnavailable):
                    await store.transition(job, JobState.PENDING, JobState.PROCESSING,
                                           now=T0, owner=OWNER)
        finally:
            await locker.close()
        moved = await store.transition(job, JobState.PENDING, JobState.PROCESSING,
                                       now=T0, owner=OWNER)
        assert moved.state is JobState.PROCESSING
    finally:
        await store.aclose()


async def test_a_connection_terminated_mid_statement_is_store_unavailable_then_heals(
        pg: PostgresStore, postgres_url: str) -> None:
    await pg.create_job(new_job("j1"))
    job = await claim_one(pg, "j1")
    admin = await asyncpg.connect(postgres_url)
    try:
        async with admin.transaction():
            await admin.execute("SELECT 1 FROM jobs WHERE id = 'j1' FOR UPDATE")
            step = asyncio.create_task(pg.transition(job, JobState.PENDING,
                                                     JobState.PROCESSING, now=T0, owner=OWNER))
            blocked = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() " \
                      "AND application_name = 'muxproxy' AND wait_event_type = 'Lock'"
            await eventually(lambda: admin.fetchval(blocked))
            await admin.execute(f"SELECT pg_terminate_backend(({blocked}))")
            with pytest.raises(StoreUnavailable):
                await step
    finally:
        await admin.close()
    moved = await pg.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0,
                                owner=OWNER)
    assert moved.state is JobState.PROCESSING


async def test_a_server_that_refuses_connections_is_store_unavailable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none",
                          connect_timeout_seconds=2)
    with pytest.raises(StoreUnavailable):
        await store.open()


async def migrate_command(tmp_path: Path, url: str) -> tuple[int, str]:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{url}"\n'
                      f'[server]\nsecret = "migrate-secret-0123456789"\n')
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "muxproxy.cli", "migrate", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path)
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return child.returncode, (out or err).decode().strip()


async def test_migrate_command_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    assert await migrate_command(tmp_path, postgres_url) == \
        (0, "database schema is current (postgresql)")
    db = await asyncpg.connect(postgres_url)
    try:
        assert await db.fetchval("SELECT MAX(version) FROM schema_version") == \
            len(PG_MIGRATIONS)
    finally:
        await db.close()
    # Run again, nothing to do; and a newer database is refused with its reason.
    assert (await migrate_command(tmp_path, postgres_url))[0] == 0
    db = await asyncpg.connect(postgres_url)
    try:
        await db.execute("INSERT INTO schema_version (version) VALUES (999)")
    finally:
        await db.close()
    code, said = await migrate_command(tmp_path, postgres_url)
    assert code == 1
    assert "schema version 999 is newer than this muxproxy" in said


async def test_migrate_command_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    assert await migrate_command(tmp_path, url) == (0, "database schema is current (sqlite)")
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_job_counts_sum_their_shards_and_keep_what_migration_2_counted(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counts for /metrics are kept per connection's shard, so concurrent job
    writes do not queue on one row; their sums are the counts, across an upgrade."""
    from muxproxy.store import postgres_migrate

    monkeypatch.setattr(postgres_migrate, "PG_MIGRATIONS", PG_MIGRATIONS[:2])
    old = PostgresStore(postgres_url, pool_size=2)
    await old.open()
    await old.create_job(new_job("before"))
    await old.aclose()
    monkeypatch.undo()
    store = PostgresStore(postgres_url, pool_size=6)
    await store.open()
    try:
        await asyncio.gather(*(store.create_job(new_job(f"j{i:02}")) for i in range(40)))
        jobs = await store.claim_due("demo", T0 + 1000, 20, OWNER, T0 + 60_000)
        await asyncio.gather(*(store.transition(job, JobState.PENDING, JobState.PROCESSING,
                                                now=T0, owner=OWNER, release=False)
                               for job in jobs))
        assert await store.count_jobs() == {("demo-image", "demo", "pending"): 21,
                                            ("demo-image", "demo", "processing"): 20}
        db = await asyncpg.connect(postgres_url)
        try:
            shards = await db.fetchval("SELECT COUNT(DISTINCT shard) FROM job_counts")
        finally:
            await db.close()
        assert shards > 1  # several connections wrote, each to its own shard
    finally:
        await store.aclose()


class _Counting(PostgresStore):
    """Which way each write went: a transaction, or a statement of its own."""

    def __init__(self, url: str) -> None:
        super().__init__(url, pool_size=2)
        self.ways: list[str] = []

    async def _transaction(self, rule: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        self.ways.append("transaction")
        return await super()._transaction(rule)

    async def _statement(self, rule: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        self.ways.append("statement")
        return await super()._statement(rule)


async def test_a_write_of_one_statement_goes_without_begin_and_commit(
        postgres_url: str) -> None:
    store = _Counting(postgres_url)
    await store.open()
    try:
        async def in_transaction(tx: Tx) -> bool:
            assert isinstance(tx, PostgresTx)
            return tx.db.is_in_transaction()

        assert await store._transaction(in_transaction) is True
        assert await store._statement(in_transaction) is False
        store.ways.clear()
        await store.create_job(new_job("plain"))
        await store.create_job(new_job("capped", max_concurrent=5))
        await store.create_job(new_job("hooked", callback="https://example.com/cb"))
        assert store.ways == ["statement", "transaction", "statement"]
        store.ways.clear()
        claimed = await store.claim_due("demo", T0, 10, OWNER, T0 + 60_000)
        store.ways.clear()
        for job in sorted((j for j in claimed if j.id != "capped"), key=lambda j: j.id,
                          reverse=True):
            job = await store.transition(job, JobState.PENDING, JobState.PROCESSING, now=T0,
                                         owner=OWNER, release=False, started_at=T0)
            await store.transition(job, JobState.PROCESSING, JobState.COMPLETED, now=T0,
                                   owner=OWNER, completed_at=T0)
        # The ending of a job with a callback inserts its delivery in the same write.
        assert store.ways == ["statement", "statement", "statement", "transaction"]
        assert await store.get_delivery("hooked") is not None
        assert await store.get_delivery("plain") is None
        ended = [await store.get_job(job_id) for job_id in ("plain", "hooked")]
        assert [job.state if job else None for job in ended] == [JobState.COMPLETED] * 2
    finally:
        await store.aclose()
