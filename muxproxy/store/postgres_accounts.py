"""PostgreSQL side of the account store: reading keys, the ledger and usage. Creating
keys and moving credits are rules of :class:`~muxproxy.store.accounts.AccountStore`
over :class:`~muxproxy.store.postgres_tx.PostgresTx`."""

from __future__ import annotations

from typing import Any

import asyncpg

from muxproxy.ratelimit import retry_after
from muxproxy.store.accounts import ApiKey, KeyNotFound, LedgerEntry, LedgerKind, UsageRow
from muxproxy.store.rows import key_from_row

# The key's bucket refilled to $3 (ms) at $2 tokens a minute, capped at $2.
_REFILLED = "LEAST($2::float8, b.tokens + GREATEST($3 - b.updated_at, 0) * $2 / 60000.0)"
# One token taken in one statement: the row lock of ON CONFLICT makes concurrent
# requests of one key, on any replica, take their turns. ``granted`` says whether
# this request took one (RETURNING sees only the new row).
_TAKE = f"""
    INSERT INTO rate_buckets AS b (key_id, tokens, updated_at, granted)
    VALUES ($1, $2::float8 - 1, $3, TRUE)
    ON CONFLICT (key_id) DO UPDATE SET
        granted = {_REFILLED} >= 1,
        tokens = {_REFILLED} - CASE WHEN {_REFILLED} >= 1 THEN 1 ELSE 0 END,
        updated_at = GREATEST(b.updated_at, $3)
    RETURNING tokens, granted"""  # noqa: S608 - constant fragments only


class PostgresAccounts:
    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        raise NotImplementedError

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        raise NotImplementedError

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        row = await self._fetchrow("SELECT * FROM api_keys WHERE key_hash = $1", key_hash)
        return key_from_row(row) if row else None

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self._fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
        return key_from_row(row) if row else None

    async def key_named(self, name: str) -> ApiKey | None:
        row = await self._fetchrow("SELECT * FROM api_keys WHERE name = $1", name)
        return key_from_row(row) if row else None

    async def list_keys(self) -> list[ApiKey]:
        rows = await self._fetch("SELECT * FROM api_keys ORDER BY created_at, name")
        return [key_from_row(r) for r in rows]

    async def revoke_key(self, key_id: str, *, now: int) -> ApiKey:
        row = await self._fetchrow("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) "
                                   "WHERE id = $2 RETURNING *", now, key_id)
        if row is None:
            raise KeyNotFound(key_id)
        return key_from_row(row)

    async def take_request(self, key_id: str, rpm: int, now: int) -> float | None:
        row = await self._fetchrow(_TAKE, key_id, rpm, now)
        assert row is not None  # an upsert always returns its row
        return None if row["granted"] else retry_after(float(row["tokens"]), rpm)

    async def ledger(self, key_id: str, *, limit: int = 100,
                     before: int | None = None) -> list[LedgerEntry]:
        rows = await self._fetch("SELECT * FROM ledger WHERE key_id = $1 "
                                 "AND ($2::bigint IS NULL OR id < $2) "
                                 "ORDER BY id DESC LIMIT $3", key_id, before, limit)
        return [LedgerEntry(id=r["id"], key_id=r["key_id"], kind=LedgerKind(r["kind"]),
                            amount=r["amount"], job_id=r["job_id"], model=r["model"],
                            note=r["note"], created_at=r["created_at"]) for r in rows]

    async def ledger_sum(self, key_id: str) -> int:
        row = await self._fetchrow("SELECT COALESCE(SUM(amount), 0)::bigint FROM ledger "
                                   "WHERE key_id = $1", key_id)
        return int(row[0]) if row else 0

    async def usage(self, key_id: str | None, *, since: int) -> list[UsageRow]:
        sql = """
            SELECT to_char(to_timestamp(created_at / 1000.0) AT TIME ZONE 'UTC',
                           'YYYY-MM-DD') AS day, model,
                   COUNT(*)::bigint AS jobs,
                   COUNT(*) FILTER (WHERE state = 'completed')::bigint AS completed,
                   COUNT(*) FILTER (WHERE state = 'failed')::bigint AS failed,
                   COALESCE(SUM(credits) FILTER (WHERE billing = 'charged'), 0)::bigint
                       AS credits
            FROM jobs WHERE ($1::text IS NULL OR key_id = $1) AND created_at >= $2
            GROUP BY day, model ORDER BY day, model"""
        rows = await self._fetch(sql, key_id, since)
        return [UsageRow(day=r["day"], model=r["model"], jobs=r["jobs"],
                         completed=r["completed"], failed=r["failed"], credits=r["credits"])
                for r in rows]
