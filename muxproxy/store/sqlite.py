"""The embedded backend: one SQLite file in WAL mode.

Writes go through one connection behind a lock, so a multi-statement transaction
is never interleaved with another coroutine's statement; reads use a second
connection and see the last committed state without waiting for writers.

The busy paths (submit, poll, claim, transition, callbacks) run their statements
right on the event loop, each as one plain function (:meth:`SqliteStore._in_writer`,
:meth:`SqliteStore._in_reader`): a statement by primary key or on an index, and a
WAL commit with ``synchronous = NORMAL`` (no fsync), block the loop for less than
a hop to aiosqlite's thread costs (docs/performance.md). The writes made in one
pass of the loop share one commit (group commit), paid once per batch, not per job.
What can block: a commit that triggers a WAL checkpoint (every ~4 MB of writes,
one fsync). A write lock held by another process is not waited for on the loop
(see ``_commit_batch``). The rest (admin, accounts, listing) still awaits
aiosqlite, under the same lock."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from muxproxy.pipeline.jobs import Job, RowLike
from muxproxy.ratelimit import RateLimiter, retry_after
from muxproxy.settings import DatabaseSettings, SettingsError, sqlite_path
from muxproxy.store.base import Store
from muxproxy.store.jobs import JobQuery
from muxproxy.store.rows import job_from_row
from muxproxy.store.schema import MIGRATIONS
from muxproxy.store.sql import TAKEN_OVER, job_search
from muxproxy.store.sqlite_accounts import AccountsMixin
from muxproxy.store.sqlite_faults import faults_mapped
from muxproxy.store.sqlite_outbox import SqliteOutbox
from muxproxy.store.sqlite_retention import SqliteRetention
from muxproxy.store.sqlite_tables import SqliteTables
from muxproxy.store.sqlite_tx import ACTIVE, SqliteTx
from muxproxy.store.tx import Tx, run_inline

# Unleased due jobs (index jobs_due) and those whose lease lapsed (jobs_lapsing: the
# few in flight), earliest first, in one statement; another owner's lapsed job whose
# submit was cut off waits for Store.recover (TAKEN_OVER).
_CLAIM = f"""
    UPDATE jobs SET lease_owner = ?, lease_until = ?
    WHERE id IN (
        SELECT id FROM (
            SELECT * FROM (
                SELECT id, run_after FROM jobs
                WHERE provider = ? AND {ACTIVE} AND run_after <= ? AND lease_owner IS NULL
                ORDER BY run_after LIMIT ?)
            UNION ALL
            SELECT id, run_after FROM jobs
            WHERE provider = ? AND {ACTIVE} AND lease_owner IS NOT NULL
                AND lease_until <= ? AND run_after <= ?
                AND (lease_owner = ? OR {TAKEN_OVER}))
        ORDER BY run_after LIMIT ?)
    RETURNING *"""  # noqa: S608 - constant fragments only
# One token of a key's bucket, refilled to ?3 (ms) at ?2 tokens a minute, taken in one
# statement under the write lock (the SQL of postgres_accounts._TAKE).
_REFILLED = "min(?2, b.tokens + max(?3 - b.updated_at, 0) * ?2 / 60000.0)"
_TAKE = f"""
    INSERT INTO rate_buckets AS b (key_id, tokens, updated_at, granted)
    VALUES (?1, ?2 - 1.0, ?3, 1)
    ON CONFLICT (key_id) DO UPDATE SET
        granted = {_REFILLED} >= 1,
        tokens = {_REFILLED} - CASE WHEN {_REFILLED} >= 1 THEN 1 ELSE 0 END,
        updated_at = max(b.updated_at, ?3)
    RETURNING tokens, granted"""  # noqa: S608 - constant fragments only
T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
# A listener (muxproxy.notify.sqlite) not heard from for this long is gone: its
# process died without taking its row back.
LISTENER_GONE_MS = 60_000


class SqliteStore(AccountsMixin, SqliteOutbox, SqliteRetention, SqliteTables, Store):
    # Several processes of one host may use the file (serve --workers N); each runs
    # group commits of its own and takes the write lock in turn.
    shared = True

    @classmethod
    def check_url(cls, url: str) -> None:
        if not url.startswith("sqlite:///") or not sqlite_path(url).name:
            raise SettingsError("database.url: expected sqlite:///relative/path.db or "
                                "sqlite:////absolute/path.db")

    @classmethod
    def from_url(cls, url: str, database: DatabaseSettings) -> SqliteStore:
        cls.check_url(url)
        return cls(sqlite_path(url),
                   busy_timeout_ms=int(database.busy_timeout_seconds * 1000))

    def __init__(self, path: str | Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = str(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._inline_reader: sqlite3.Connection | None = None
        self._lock: Any = None
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._commits: set[asyncio.Task[None]] = set()
        # Until other processes use the file too, its rate buckets live in memory.
        self._rates: RateLimiter | None = RateLimiter()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = asyncio.Lock()
        self._writer = await self._connect()
        await self._migrate(self._writer)
        await self._forget_gone_listeners(self._writer)
        self._reader = await self._connect() if self.path != ":memory:" else self._writer
        if self.path == ":memory:":
            self._inline_reader = self._writer._conn
        else:
            self._inline_reader = sqlite3.connect(self.path, isolation_level=None,
                                                  check_same_thread=False)
            self._inline_reader.row_factory = sqlite3.Row
            self._inline_reader.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")

    async def _connect(self) -> aiosqlite.Connection:
        # check_same_thread=False: _in_writer uses the writer from the loop's thread
        # too, never at the same time as aiosqlite's thread (both hold self._lock).
        conn = await aiosqlite.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
        conn.row_factory = aiosqlite.Row
        for pragma in ("journal_mode = WAL", "synchronous = NORMAL",
                       f"busy_timeout = {self.busy_timeout_ms}",
                       "foreign_keys = ON", "temp_store = MEMORY"):
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self.path}: schema version {version} is newer than this "
                               f"muxproxy ({len(MIGRATIONS)}); upgrade muxproxy")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.execute("BEGIN IMMEDIATE")
            try:
                # Another process starting on the same file may have run it meanwhile.
                async with conn.execute("PRAGMA user_version") as cur:
                    row = await cur.fetchone()
                if row and int(row[0]) >= number:
                    await conn.execute("ROLLBACK")
                    continue
                for statement in _statements(script):
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {number}")
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

    async def _forget_gone_listeners(self, conn: aiosqlite.Connection) -> None:
        """Signals are written while a process listens (schema migration 8); one that
        died without saying so would have them written for nobody, forever."""
        gone = int(time.time() * 1000) - LISTENER_GONE_MS
        async with conn.execute(
                "SELECT EXISTS (SELECT 1 FROM signal_listeners WHERE alive_at < ?) OR "
                "(NOT EXISTS (SELECT 1 FROM signal_listeners) AND "
                "EXISTS (SELECT 1 FROM signals))", (gone,)) as cur:
            row = await cur.fetchone()
        if not (row and row[0]):
            return  # the usual case: nothing to write
        await conn.execute("BEGIN IMMEDIATE")
        await conn.execute("DELETE FROM signal_listeners WHERE alive_at < ?", (gone,))
        await conn.execute("DELETE FROM signals WHERE NOT EXISTS "
                           "(SELECT 1 FROM signal_listeners)")
        await conn.execute("COMMIT")

    def expect_other_processes(self) -> None:
        self._rates = None

    async def aclose(self) -> None:
        while self._commits:  # a batch still gathering is written first
            await asyncio.gather(*self._commits)
        if self._inline_reader is not None and self.path != ":memory:":
            self._inline_reader.close()
        self._inline_reader = None
        for conn in {id(c): c for c in (self._reader, self._writer) if c}.values():
            await conn.close()
        self._reader = self._writer = None

    async def take_request(self, key_id: str, rpm: int, now: int) -> float | None:
        if self._rates is not None:
            return self._rates.acquire(key_id, rpm, now)
        tokens, granted = await self._in_writer(
            lambda db: db.execute(_TAKE, (key_id, rpm, now)).fetchone())
        return None if granted else retry_after(float(tokens), rpm)

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    def _read(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("store is not open")
        return self._reader

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        """Every row of one query, run start to finish in one step on the read
        connection. A read statement must never stay open across an ``await``:
        while one is, the connection keeps its read transaction, and every other
        read on it sees that old snapshot (a job just created looks missing)."""
        with faults_mapped():
            return list(await self._read().execute_fetchall(sql, args))

    async def _fetch_one(self, sql: str, args: Sequence[Any] = ()) -> aiosqlite.Row | None:
        rows = await self._fetch(sql, args)
        return rows[0] if rows else None

    @asynccontextmanager
    async def _write(self, transaction: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        if self._writer is None:
            raise RuntimeError("store is not open")
        async with self._lock:
            with faults_mapped():
                if not transaction:
                    yield self._writer
                    return
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self._writer
                except BaseException:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise
                await self._writer.execute("COMMIT")

    async def _in_writer(self, fn: Callable[[sqlite3.Connection], T], *,
                         transaction: bool = True) -> T:
        """Run ``fn(connection)`` on the writer, on the loop's thread, as one step of
        the next group commit; return what it returned once that commit is done.

        Every call made during one pass of the event loop joins one transaction
        (each in a savepoint of its own, so a call that raises undoes only its own
        changes and only its caller sees the error): under load, the pages that many
        jobs touch (the table's last leaf, the indexes) are written to the WAL once
        per commit instead of once per job. A call whose caller is cancelled before
        its batch runs is dropped. ``transaction`` is accepted for symmetry: every
        call is made in a transaction."""
        if self._writer is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._batch.append((fn, done))
        if len(self._batch) == 1:
            commit = loop.create_task(self._commit_batch())
            self._commits.add(commit)
            commit.add_done_callback(self._commits.discard)
        with faults_mapped():
            return cast(T, await done)

    async def _commit_batch(self) -> None:
        writer = self._writer
        async with self._lock:
            batch, self._batch = self._batch, []
            if writer is None:  # closed while the batch gathered
                _settle(batch, [RuntimeError("store is not open")] * len(batch))
                return
            batch = [(fn, done) for fn, done in batch if not done.cancelled()]
            if not batch:
                return
            try:
                await self._commit(writer, batch)
            except Exception as exc:
                # A fault before the batch ran (BEGIN on a read-only file): every
                # caller hears of it, none waits forever.
                _settle(batch, [_Failed(exc)] * len(batch))

    async def _commit(self, writer: aiosqlite.Connection,
                      batch: Sequence[tuple[Any, asyncio.Future[Any]]]) -> None:
        conn, fns = writer._conn, [fn for fn, _ in batch]
        # The write lock is taken without waiting: when another process holds it
        # (``muxproxy keys``, an operator's sqlite3 shell), the batch runs in
        # aiosqlite's thread instead and waits there (``busy_timeout``), so the
        # loop is never blocked on it.
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked = True
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                raise
            locked = False
        finally:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        if locked:
            outcomes = _run_batch(conn, fns)
        else:
            outcomes = await writer._execute(  # type: ignore[no-untyped-call]
                _waiting_batch, conn, fns)
        _settle(batch, outcomes)

    async def _in_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on a reader, on the loop's thread."""
        if self._inline_reader is None:
            raise RuntimeError("store is not open")
        with faults_mapped():
            return fn(self._inline_reader)

    async def _transaction(self, rule: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        # The rule runs to its end inside the next group commit: SqliteTx's methods
        # are plain sqlite3 calls and never suspend.
        return await self._in_writer(
            lambda db: run_inline(rule(SqliteTx(db))))

    # -- jobs ---------------------------------------------------------------

    async def get_job(self, job_id: str, key_id: str | None = None) -> Job | None:
        sql, args = "SELECT * FROM jobs WHERE id = ?", [job_id]
        if key_id is not None:
            sql += " AND key_id = ?"
            args.append(key_id)
        row = await self._in_reader(lambda db: db.execute(sql, args).fetchone())
        return job_from_row(row) if row else None

    async def list_jobs(self, key_id: str, *, limit: int = 50, before: int | None = None,
                        before_id: str | None = None) -> list[Job]:
        sql = "SELECT * FROM jobs WHERE key_id = ?"
        args: list[Any] = [key_id]
        if before is not None and before_id is not None:
            sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            args.extend((before, before, before_id))
        elif before is not None:
            sql += " AND created_at < ?"
            args.append(before)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit)
        return [job_from_row(r) for r in await self._fetch(sql, args)]

    async def find_jobs(self, query: JobQuery) -> list[Job]:
        sql, args = job_search(query)
        return [job_from_row(r) for r in await self._fetch(sql, args)]

    async def scan_jobs(self, *, after: str | None = None, limit: int = 500) -> list[Job]:
        rows = await self._fetch("SELECT * FROM jobs WHERE id > ? ORDER BY id LIMIT ?",
                                 (after or "", limit))
        return [job_from_row(r) for r in rows]

    async def claim_due_many(self, wanted: Mapping[str, tuple[int, int]], now: int,
                             owner: str) -> dict[str, list[Job]]:
        wanted = {name: spec for name, spec in wanted.items() if spec[0] > 0}
        if not wanted:
            return {}

        def claim(db: sqlite3.Connection) -> dict[str, list[RowLike]]:
            return {name: db.execute(_CLAIM, (owner, lease_until, name, now, limit,
                                              name, now, now, owner, limit)).fetchall()
                    for name, (limit, lease_until) in wanted.items()}

        rows = await self._in_writer(claim, transaction=False)
        return {name: sorted((job_from_row(r) for r in found), key=lambda j: j.run_after)
                for name, found in rows.items() if found}

    async def next_due(self, providers: Sequence[str]) -> int | None:
        if not providers:
            return None
        marks = ", ".join("?" for _ in providers)
        # A leased job falls due again when its lease lapses (its step died without
        # handing it back); leased jobs are the few in flight, read by jobs_lapsing.
        sql = (f"SELECT MIN(run_after) FROM jobs WHERE {ACTIVE} AND lease_owner IS NULL "  # noqa: S608
               f"AND provider IN ({marks}) UNION ALL "
               f"SELECT MIN(MAX(run_after, lease_until)) FROM jobs WHERE {ACTIVE} "
               f"AND lease_owner IS NOT NULL AND {TAKEN_OVER} AND provider IN ({marks})")
        args = (*providers, *providers)
        rows = await self._in_reader(lambda db: db.execute(sql, args).fetchall())
        found = [int(row[0]) for row in rows if row[0] is not None]
        return min(found) if found else None

    async def renew_leases(self, job_ids: Sequence[str], owner: str, until: int) -> None:
        if not job_ids:
            return
        marks = ", ".join("?" for _ in job_ids)
        sql = (f"UPDATE jobs SET lease_until = ? WHERE lease_owner = ? "  # noqa: S608
               f"AND id IN ({marks})")
        await self._in_writer(lambda db: db.execute(sql, (until, owner, *job_ids)),
                              transaction=False)

    async def count_jobs(self) -> Mapping[tuple[str, str, str], int]:
        # Kept by triggers (schema.py, job_counts): a few rows, read on the loop's thread
        # so it neither scans the jobs table nor queues behind the aiosqlite reader.
        sql = "SELECT model, provider, state, n FROM job_counts WHERE n > 0"
        rows = await self._in_reader(lambda db: db.execute(sql).fetchall())
        return {(r[0], r[1], r[2]): int(r[3]) for r in rows}


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _run_batch(conn: sqlite3.Connection, fns: Sequence[Callable[[sqlite3.Connection], Any]]
               ) -> list[Any]:
    """The rest of a transaction begun on ``conn``: each ``fn`` in a savepoint,
    then COMMIT. Returns each one's result, or a :class:`_Failed`. A batch of one
    (every write, when the gateway is not busy) needs no savepoint: the
    transaction is its own, and a failure rolls it back."""
    savepoints = len(fns) > 1
    outcomes: list[Any] = []
    try:
        for fn in fns:
            if savepoints:
                conn.execute("SAVEPOINT step")
            try:
                outcomes.append(fn(conn))
            except Exception as exc:
                if not savepoints:
                    raise
                conn.execute("ROLLBACK TO step")
                outcomes.append(_Failed(exc))
            if savepoints:
                conn.execute("RELEASE step")
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [_Failed(exc)] * len(fns)
    return outcomes


def _waiting_batch(conn: sqlite3.Connection,
                   fns: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    """:func:`_run_batch` after waiting (in aiosqlite's thread) for the write lock."""
    try:
        conn.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout
    except sqlite3.Error as exc:
        return [_Failed(exc)] * len(fns)
    return _run_batch(conn, fns)


def _settle(batch: Sequence[tuple[Any, asyncio.Future[Any]]], outcomes: Sequence[Any]) -> None:
    for (_, done), outcome in zip(batch, outcomes, strict=True):
        if done.done():
            continue
        if isinstance(outcome, _Failed):
            done.set_exception(outcome.error)
        elif isinstance(outcome, BaseException):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)


def _statements(script: str) -> list[str]:
    """Split a migration on ``;`` lines, keeping trigger bodies whole."""
    return [s.strip() for s in script.split("\n;\n") if s.strip()]

