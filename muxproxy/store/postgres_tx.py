"""PostgreSQL's :class:`~muxproxy.store.tx.Tx`: statements on one pooled connection
inside one transaction (``READ COMMITTED``). Where a rule reads before it writes,
the read locks what the write depends on (the key's row for its balance and its
count of unfinished jobs, an advisory lock for an Idempotency-Key), so concurrent
transactions on other connections or other replicas queue instead of racing."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from muxproxy.pipeline.jobs import IdempotencyClaim, IllegalTransition, Job, JobState
from muxproxy.store.accounts import ApiKey, KeyExists, KeyLimits, LedgerKind
from muxproxy.store.rows import (
    NEW_JOB_DEFAULTS,
    idempotency_from_row,
    job_from_row,
    key_from_row,
)
from muxproxy.store.sql import (
    INSERT_DELIVERY,
    INSERT_KEY,
    SELECT_IDEMPOTENCY,
    delivery_values,
    encoded,
    job_update,
    key_update,
    limit_values,
)
from muxproxy.store.tx import IdempotencyRow, Tx

# A connection: one of the pool's, or (migrations, tests) one of its own.
Db: TypeAlias = "asyncpg.Connection | PoolConnectionProxy[asyncpg.Record]"
ACTIVE = f"state IN ('{JobState.PENDING}', '{JobState.PROCESSING}')"


@functools.lru_cache(maxsize=256)
def pg(sql: str) -> str:
    """``sql`` with SQLite's ``?`` placeholders numbered as PostgreSQL's ``$n``, so the
    statements both backends share are written once."""
    count = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


def updated(status: str) -> int:
    """The row count of a command's status tag (``UPDATE 3``)."""
    return int(status.rpartition(" ")[2] or 0)


@functools.lru_cache(maxsize=8)
def _insert_sql(columns: tuple[str, ...]) -> str:
    return (f"INSERT INTO jobs ({', '.join(columns)}) "  # noqa: S608 - column names
            f"VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))})")


_EXPIRE = f"""
    UPDATE jobs SET {{}}
    WHERE id IN (
        SELECT id FROM jobs WHERE {ACTIVE} AND deadline_at <= ?
        AND (lease_owner IS NULL OR lease_until < ?) ORDER BY deadline_at LIMIT ?
        FOR UPDATE SKIP LOCKED)
    RETURNING *"""  # noqa: S608 - constant fragments only


class PostgresTx(Tx):
    def __init__(self, db: Db) -> None:
        self.db = db

    async def insert_job(self, row: Mapping[str, Any]) -> Job:
        stored = encoded(row)
        await self.db.execute(_insert_sql(tuple(stored)), *stored.values())
        return job_from_row(NEW_JOB_DEFAULTS | stored)

    async def update_job(self, job_id: str, expected: JobState | None, owner: str | None,
                         values: Mapping[str, Any], *, after: Job | None = None) -> Job | None:
        sql, args = job_update(job_id, expected, owner, encoded(values))
        try:
            if after is not None:
                return after if updated(await self.db.execute(pg(sql), *args)) == 1 else None
            row = await self.db.fetchrow(pg(sql + " RETURNING *"), *args)
        except asyncpg.CheckViolationError as exc:
            if "illegal transition" in str(exc) and expected is not None:
                raise IllegalTransition(job_id, expected, JobState(values["state"])) from None
            raise
        return job_from_row(row) if row is not None else None

    async def active_jobs(self, key_id: str) -> int:
        # The key's row is locked first: two submits of one key count in turn.
        await self.db.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
        count = await self.db.fetchval(f"SELECT COUNT(*) FROM jobs WHERE key_id = $1 "  # noqa: S608
                                       f"AND {ACTIVE}", key_id)
        return int(count)

    async def fail_overdue(self, now: int, limit: int, values: Mapping[str, Any]) -> list[Job]:
        stored = encoded(values)
        sql = _EXPIRE.format(", ".join(f"{k} = ?" for k in stored))
        rows = await self.db.fetch(pg(sql), *stored.values(), now, now, limit)
        return [job_from_row(r) for r in rows]

    async def orphaned(self, owner: str, now: int) -> list[Job]:
        # Lapsed leases only: a live replica renews its own. Rows another replica is
        # claiming or recovering right now are skipped, not waited for.
        rows = await self.db.fetch(f"SELECT * FROM jobs WHERE lease_owner IS NOT NULL "  # noqa: S608
                                   f"AND lease_owner != $1 AND lease_until <= $2 AND {ACTIVE} "
                                   f"FOR UPDATE SKIP LOCKED", owner, now)
        return [job_from_row(r) for r in rows]

    async def set_billing(self, job_id: str, expected: str, target: str) -> bool:
        return updated(await self.db.execute(
            "UPDATE jobs SET billing = $1 WHERE id = $2 AND billing = $3",
            target, job_id, expected)) == 1

    async def funds(self, key_id: str) -> tuple[int, bool] | None:
        row = await self.db.fetchrow("SELECT balance, unlimited FROM api_keys "
                                     "WHERE id = $1 FOR UPDATE", key_id)
        return (int(row[0]), bool(row[1])) if row else None

    async def key(self, key_id: str) -> ApiKey | None:
        row = await self.db.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
        return key_from_row(row) if row else None

    async def key_named(self, name: str) -> ApiKey | None:
        row = await self.db.fetchrow("SELECT * FROM api_keys WHERE name = $1", name)
        return key_from_row(row) if row else None

    async def insert_key(self, key_id: str, name: str, key_hash: str, now: int,
                         limits: KeyLimits) -> None:
        try:
            await self.db.execute(pg(INSERT_KEY), key_id, name, key_hash, now,
                                  *limit_values(limits))
        except asyncpg.UniqueViolationError:
            raise KeyExists(name) from None

    async def set_key(self, key_id: str, limits: KeyLimits,
                      key_hash: str | None = None) -> ApiKey | None:
        sql, args = key_update(key_id, limits, key_hash)
        row = await self.db.fetchrow(pg(sql), *args)
        return key_from_row(row) if row else None

    async def add_ledger(self, key_id: str, kind: LedgerKind, amount: int, now: int, *,
                         job_id: str | None = None, model: str | None = None,
                         note: str | None = None) -> None:
        await self.db.execute("INSERT INTO ledger (key_id, kind, amount, job_id, model, note, "
                              "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                              key_id, kind.value, amount, job_id, model, note, now)
        await self.db.execute("UPDATE api_keys SET balance = balance + $1 WHERE id = $2",
                              amount, key_id)

    async def purge_idempotency(self, key_id: str, idem_key: str, now: int) -> None:
        # Every rule on one Idempotency-Key starts here: the lock, held to the end of
        # the transaction, makes two requests with one key take their turns.
        await self.db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                              f"{key_id}\n{idem_key}")
        await self.db.execute("DELETE FROM idempotency WHERE key_id = $1 AND idem_key = $2 "
                              "AND expires_at <= $3", key_id, idem_key, now)
        await self.db.execute("DELETE FROM idempotency WHERE ctid IN (SELECT ctid FROM "
                              "idempotency WHERE expires_at <= $1 LIMIT 100 "
                              "FOR UPDATE SKIP LOCKED)", now)

    async def idempotency(self, key_id: str, idem_key: str) -> IdempotencyRow | None:
        row = await self.db.fetchrow(pg(SELECT_IDEMPOTENCY), key_id, idem_key)
        return None if row is None else idempotency_from_row(row)

    async def put_idempotency(self, claim: IdempotencyClaim, request_hash: str, owner: str,
                              now: int, expires_at: int) -> None:
        await self.db.execute(
            "INSERT INTO idempotency (key_id, idem_key, request_hash, claim, owner, "
            "created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (key_id, idem_key) DO UPDATE SET request_hash = excluded.request_hash, "
            "job_id = NULL, claim = excluded.claim, owner = excluded.owner, "
            "created_at = excluded.created_at, expires_at = excluded.expires_at",
            claim.key_id, claim.idem_key, request_hash, claim.token, owner, now, expires_at)

    async def bind_idempotency(self, claim: IdempotencyClaim, job_id: str) -> bool:
        return updated(await self.db.execute(
            "UPDATE idempotency SET job_id = $1, claim = NULL WHERE key_id = $2 "
            "AND idem_key = $3 AND claim = $4 AND job_id IS NULL",
            job_id, claim.key_id, claim.idem_key, claim.token)) == 1

    async def drop_idempotency(self, claim: IdempotencyClaim) -> None:
        await self.db.execute("DELETE FROM idempotency WHERE key_id = $1 AND idem_key = $2 "
                              "AND claim = $3 AND job_id IS NULL",
                              claim.key_id, claim.idem_key, claim.token)

    async def insert_deliveries(self, jobs: Sequence[Job], now: int) -> None:
        values = [delivery_values(job, now) for job in jobs if job.callback_url is not None]
        if values:
            await self.db.executemany(pg(INSERT_DELIVERY + " ON CONFLICT (job_id) DO NOTHING"),
                                      values)
