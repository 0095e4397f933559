"""SQLite specifics beyond the contract: the schema guards itself."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from muxproxy.store import InsufficientBalance
from muxproxy.store.schema import MIGRATIONS
from muxproxy.store.sqlite import SqliteStore
from tests.contract.test_store_contract import T0, new_job


async def test_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    await store.aclose()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_database_refuses_illegal_transitions_written_directly(tmp_path: Path) -> None:
    """Even SQL that bypasses the store cannot break the state machine."""
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    await store.create_job(new_job("j1"))
    await store.aclose()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        with pytest.raises(sqlite3.IntegrityError, match="illegal transition"):
            conn.execute("UPDATE jobs SET state = 'completed' WHERE id = 'j1'")
        conn.execute("UPDATE jobs SET state = 'processing' WHERE id = 'j1'")
        conn.execute("UPDATE jobs SET state = 'failed', fail_msg = 'x' WHERE id = 'j1'")
        with pytest.raises(sqlite3.IntegrityError, match="illegal transition"):
            conn.execute("UPDATE jobs SET state = 'processing' WHERE id = 'j1'")
        with pytest.raises(sqlite3.IntegrityError, match="illegal transition"):
            conn.execute("UPDATE jobs SET fail_msg = 'rewritten' WHERE id = 'j1'")


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    store = SqliteStore(tmp_path / "s.db")
    with pytest.raises(RuntimeError, match="newer"):
        await store.open()
    await store.aclose()


async def test_reopen_does_not_rerun_migrations(tmp_path: Path) -> None:
    for _ in range(2):
        store = SqliteStore(tmp_path / "s.db")
        await store.open()
        await store.create_job(new_job(f"j{_}", created=T0 + _))
        await store.aclose()
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        assert len(await store.list_jobs("key-a")) == 2
    finally:
        await store.aclose()


async def test_the_writes_of_one_loop_pass_share_one_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    statements: list[str] = []
    store._writer._conn.set_trace_callback(statements.append)  # type: ignore[union-attr]
    try:
        jobs = await asyncio.gather(*(store.create_job(new_job(f"j{i}")) for i in range(20)))
        assert [j.id for j in jobs] == [f"j{i}" for i in range(20)]
        assert statements.count("COMMIT") == 1
        await store.create_job(new_job("alone"))
        assert statements.count("COMMIT") == 2
    finally:
        await store.aclose()


async def test_a_write_that_fails_in_a_batch_undoes_only_its_own_changes(
        tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.create_job(new_job("taken"))
        first, clash, last = await asyncio.gather(
            store.create_job(new_job("a")), store.create_job(new_job("taken")),
            store.create_job(new_job("b")), return_exceptions=True)
        assert isinstance(clash, sqlite3.IntegrityError)
        assert {getattr(first, "id", None), getattr(last, "id", None)} == {"a", "b"}
        for job_id in ("a", "b", "taken"):
            assert await store.get_job(job_id) is not None
    finally:
        await store.aclose()


async def test_a_write_alone_that_fails_halfway_leaves_nothing(tmp_path: Path) -> None:
    # A batch of one runs without a savepoint: its failure rolls back the whole
    # transaction, the job row its insert had already written included.
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    statements: list[str] = []
    try:
        key = await store.create_key("poor", "digest-poor", now=T0, credits=2)
        store._writer._conn.set_trace_callback(statements.append)  # type: ignore[union-attr]
        with pytest.raises(InsufficientBalance):
            await store.create_job(new_job("dear", key_id=key.id, credits=5))
        assert "ROLLBACK" in statements and not any("SAVEPOINT" in s for s in statements)
        assert await store.get_job("dear") is None
        assert await store.ledger_sum(key.id) == 2
        assert (await store.create_job(new_job("next", key_id=key.id, credits=2))).id == "next"
    finally:
        await store.aclose()


async def test_a_write_whose_caller_is_cancelled_before_its_batch_is_dropped(
        tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        write = asyncio.create_task(store.create_job(new_job("dropped")))
        await asyncio.sleep(0)  # the write joined the batch, which has not run yet
        write.cancel()
        kept = await store.create_job(new_job("kept"))
        assert write.cancelled()
        assert kept.id == "kept"
        assert await store.get_job("dropped") is None
    finally:
        await store.aclose()
