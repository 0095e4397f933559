"""The PostgreSQL backend, for several gateway processes on one database.

Every statement runs on a connection of one asyncpg pool, taken in
:meth:`PostgresStore._connection`, where driver faults become
:class:`~muxproxy.errors.StoreUnavailable`. A rule runs in one transaction on one
connection (:class:`~muxproxy.store.postgres_tx.PostgresTx`); claims are single
statements with ``FOR UPDATE SKIP LOCKED``, so processes claiming at once each take
different jobs. The schema is migrated under an advisory lock: replicas starting
together migrate once (:mod:`muxproxy.store.postgres_migrate`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

from muxproxy.pipeline.jobs import Job
from muxproxy.settings import DatabaseSettings, SettingsError
from muxproxy.store.base import Store
from muxproxy.store.jobs import JobQuery
from muxproxy.store.postgres_accounts import PostgresAccounts
from muxproxy.store.postgres_faults import faults_mapped
from muxproxy.store.postgres_migrate import migrate
from muxproxy.store.postgres_outbox import PostgresOutbox
from muxproxy.store.postgres_tables import PostgresTables
from muxproxy.store.postgres_tx import ACTIVE, Db, PostgresTx, pg, updated
from muxproxy.store.rows import job_from_row
from muxproxy.store.sql import TAKEN_OVER, job_search
from muxproxy.store.tx import Tx

T = TypeVar("T")
SCHEMES = ("postgresql", "postgres")
# Due unleased jobs and those whose lease lapsed, earliest first, in one statement;
# rows another process is claiming right now are skipped, not waited for. Another
# owner's lapsed job whose submit was cut off waits for Store.recover (TAKEN_OVER).
_CLAIM = f"""
    WITH due AS (
        SELECT id FROM jobs
        WHERE provider = $3 AND {ACTIVE} AND run_after <= $4
            AND (lease_owner IS NULL OR (lease_until <= $4
                                         AND (lease_owner = $1 OR {TAKEN_OVER})))
        ORDER BY run_after LIMIT $5
        FOR UPDATE SKIP LOCKED)
    UPDATE jobs SET lease_owner = $1, lease_until = $2 FROM due WHERE jobs.id = due.id
    RETURNING jobs.*"""  # noqa: S608 - constant fragments only
_UNSWEPT = "state IN ('completed', 'failed') AND swept < 2"


class PostgresStore(PostgresAccounts, PostgresOutbox, PostgresTables, Store):
    shared = True

    @classmethod
    def check_url(cls, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname or not parts.path.strip("/"):
            raise SettingsError("database.url: expected postgresql://user:password@host:5432/db")

    @classmethod
    def from_url(cls, url: str, database: DatabaseSettings) -> PostgresStore:
        cls.check_url(url)
        return cls(url, pool_size=database.pool_size,
                   statement_timeout_seconds=database.statement_timeout_seconds,
                   connect_timeout_seconds=database.connect_timeout_seconds)

    def __init__(self, url: str, *, pool_size: int = 10,
                 statement_timeout_seconds: float = 30.0,
                 connect_timeout_seconds: float = 5.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.statement_timeout_seconds = statement_timeout_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        timeout_ms = int(self.statement_timeout_seconds * 1000)
        with faults_mapped():
            pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_size,
                timeout=self.connect_timeout_seconds, reset=_kept_as_is,
                server_settings={"statement_timeout": str(timeout_ms),
                                 "application_name": "muxproxy"})
        try:
            async with self._connection(pool) as db:
                await migrate(db, where=_safe_url(self.url))
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        self._pool = None

    @asynccontextmanager
    async def _connection(self, pool: asyncpg.Pool | None = None
                          ) -> AsyncIterator[Db]:
        pool = pool or self._pool
        if pool is None:
            raise RuntimeError("store is not open")
        with faults_mapped():
            async with pool.acquire(timeout=self.connect_timeout_seconds) as db:
                yield db

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as db:
            return list(await db.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self._connection() as db:
            return await db.fetchrow(sql, *args)

    async def _execute(self, sql: str, *args: Any) -> int:
        """Run one statement; how many rows it touched."""
        async with self._connection() as db:
            return updated(await db.execute(sql, *args))

    async def _transaction(self, rule: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        async with self._connection() as db, db.transaction():
            return await rule(PostgresTx(db))

    async def _statement(self, rule: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        # The statement is its own transaction: one round trip instead of three.
        async with self._connection() as db:
            return await rule(PostgresTx(db))

    async def ping(self) -> None:
        await self._fetchrow("SELECT 1")

    async def probe_write(self, now: int) -> None:
        await self._execute("INSERT INTO store_probe (id, at) VALUES (1, $1) "
                            "ON CONFLICT (id) DO UPDATE SET at = excluded.at", now)

    # -- jobs ---------------------------------------------------------------

    async def get_job(self, job_id: str, key_id: str | None = None) -> Job | None:
        if key_id is None:
            row = await self._fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        else:
            row = await self._fetchrow("SELECT * FROM jobs WHERE id = $1 AND key_id = $2",
                                       job_id, key_id)
        return job_from_row(row) if row else None

    async def list_jobs(self, key_id: str, *, limit: int = 50, before: int | None = None,
                        before_id: str | None = None) -> list[Job]:
        rows = await self._fetch(
            "SELECT * FROM jobs WHERE key_id = $1 AND ($2::bigint IS NULL OR created_at < $2 "
            "OR ($3::text IS NOT NULL AND created_at = $2 AND id < $3)) "
            "ORDER BY created_at DESC, id DESC LIMIT $4", key_id, before, before_id, limit)
        return [job_from_row(r) for r in rows]

    async def find_jobs(self, query: JobQuery) -> list[Job]:
        sql, args = job_search(query)
        return [job_from_row(r) for r in await self._fetch(pg(sql), *args)]

    async def scan_jobs(self, *, after: str | None = None, limit: int = 500) -> list[Job]:
        rows = await self._fetch("SELECT * FROM jobs WHERE id > $1 ORDER BY id LIMIT $2",
                                 after or "", limit)
        return [job_from_row(r) for r in rows]

    async def claim_due_many(self, wanted: Mapping[str, tuple[int, int]], now: int,
                             owner: str) -> dict[str, list[Job]]:
        claimed: dict[str, list[Job]] = {}
        async with self._connection() as db:
            for name, (limit, lease_until) in wanted.items():
                if limit <= 0:
                    continue
                rows = await db.fetch(_CLAIM, owner, lease_until, name, now, limit)
                if rows:
                    claimed[name] = sorted((job_from_row(r) for r in rows),
                                           key=lambda j: j.run_after)
        return claimed

    async def next_due(self, providers: Sequence[str]) -> int | None:
        if not providers:
            return None
        row = await self._fetchrow(
            f"SELECT LEAST("  # noqa: S608 - constant fragments only
            f"(SELECT MIN(run_after) FROM jobs WHERE {ACTIVE} AND lease_owner IS NULL "
            f"AND provider = ANY($1::text[])), "
            f"(SELECT MIN(GREATEST(run_after, lease_until)) FROM jobs WHERE {ACTIVE} "
            f"AND lease_owner IS NOT NULL AND {TAKEN_OVER} "
            f"AND provider = ANY($1::text[])))", list(providers))
        return int(row[0]) if row and row[0] is not None else None

    async def renew_leases(self, job_ids: Sequence[str], owner: str, until: int) -> None:
        if job_ids:
            await self._execute("UPDATE jobs SET lease_until = $1 WHERE lease_owner = $2 "
                                "AND id = ANY($3::text[])", until, owner, list(job_ids))

    async def count_jobs(self) -> Mapping[tuple[str, str, str], int]:
        # Kept by triggers (pg_schema.py, job_counts) in up to 16 shards: a few rows,
        # whatever the table's size.
        rows = await self._fetch("SELECT model, provider, state, SUM(n)::bigint FROM job_counts "
                                 "GROUP BY model, provider, state HAVING SUM(n) > 0")
        return {(r[0], r[1], r[2]): int(r[3]) for r in rows}

    # -- retention ------------------------------------------------------------

    async def ended_unswept(self, limit: int, after: tuple[int, str] | None = None
                            ) -> list[Job]:
        return await self._unswept(f"{_UNSWEPT} AND swept = 0", (), limit, after)

    async def expired_unswept(self, ended_before: int, limit: int,
                              after: tuple[int, str] | None = None) -> list[Job]:
        return await self._unswept(f"{_UNSWEPT} AND swept IN (0, 1) AND completed_at <= ?",
                                   (ended_before,), limit, after)

    async def _unswept(self, where: str, args: tuple[Any, ...], limit: int,
                       after: tuple[int, str] | None) -> list[Job]:
        if after is not None:
            where, args = where + " AND (completed_at, id) > (?, ?)", (*args, *after)
        rows = await self._fetch(pg(f"SELECT * FROM jobs WHERE {where} "  # noqa: S608
                                    "ORDER BY completed_at, id LIMIT ?"), *args, limit)
        return [job_from_row(r) for r in rows]

    async def mark_swept(self, job_ids: Sequence[str], level: int) -> None:
        if job_ids:
            await self._execute(pg("UPDATE jobs SET swept = ? WHERE swept < ? "
                                   "AND id = ANY(?::text[])"), level, level, list(job_ids))


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return f"{parts.scheme}://{host}{parts.path}"


async def _kept_as_is(conn: asyncpg.Connection) -> None:
    """A connection back in the pool needs no reset query (asyncpg's default sends one,
    a round trip per use): the store leaves no session state on it. Settings are given
    at connect, LISTEN has a connection of its own (muxproxy.notify.postgres), locks
    are transaction-scoped but migrate's, which it releases itself, and an open
    transaction is still rolled back by asyncpg before this is called."""
