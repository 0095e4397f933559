"""SQLite side of the account store: reading keys, the ledger and usage. Creating
keys and moving credits are rules of :class:`~muxproxy.store.accounts.AccountStore`
over :class:`~muxproxy.store.sqlite_tx.SqliteTx`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import aiosqlite

from muxproxy.store.accounts import (
    ApiKey,
    KeyNotFound,
    LedgerEntry,
    LedgerKind,
    UsageRow,
)
from muxproxy.store.rows import key_from_row

T = TypeVar("T")


class Connected(Protocol):
    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[aiosqlite.Row]: ...

    async def _fetch_one(self, sql: str, args: Sequence[Any] = ()) -> aiosqlite.Row | None: ...

    def _write(self, transaction: bool = False
               ) -> AbstractAsyncContextManager[aiosqlite.Connection]: ...

    async def _in_writer(self, fn: Callable[[sqlite3.Connection], T], *,
                         transaction: bool = True) -> T: ...

    async def _in_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


class AccountsMixin:
    async def key_by_hash(self: Connected, key_hash: str) -> ApiKey | None:
        # On the loop's thread, one indexed lookup: a key check never waits in the
        # aiosqlite reader's queue behind slower reads (usage, ledgers, listings).
        row = await self._in_reader(lambda db: db.execute(
            "SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone())
        return key_from_row(row) if row else None

    async def get_key(self: Connected, key_id: str) -> ApiKey | None:
        row = await self._fetch_one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        return key_from_row(row) if row else None

    async def key_named(self: Connected, name: str) -> ApiKey | None:
        row = await self._fetch_one("SELECT * FROM api_keys WHERE name = ?", (name,))
        return key_from_row(row) if row else None

    async def list_keys(self: Connected) -> list[ApiKey]:
        return [key_from_row(r) for r in await self._fetch("SELECT * FROM api_keys "
                                                           "ORDER BY created_at, name")]

    async def revoke_key(self: Connected, key_id: str, *, now: int) -> ApiKey:
        async with self._write() as db, db.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) "
                "WHERE id = ? RETURNING *", (now, key_id)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise KeyNotFound(key_id)
        return key_from_row(row)

    async def ledger(self: Connected, key_id: str, *, limit: int = 100,
                     before: int | None = None) -> list[LedgerEntry]:
        sql = "SELECT * FROM ledger WHERE key_id = ?"
        args: list[Any] = [key_id]
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        rows = await self._fetch(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [LedgerEntry(id=r["id"], key_id=r["key_id"], kind=LedgerKind(r["kind"]),
                            amount=r["amount"], job_id=r["job_id"], model=r["model"],
                            note=r["note"], created_at=r["created_at"]) for r in rows]

    async def ledger_sum(self: Connected, key_id: str) -> int:
        row = await self._fetch_one("SELECT COALESCE(SUM(amount), 0) FROM ledger "
                                    "WHERE key_id = ?", (key_id,))
        return int(row[0]) if row else 0

    async def usage(self: Connected, key_id: str | None, *, since: int) -> list[UsageRow]:
        sql = """
            SELECT date(created_at / 1000, 'unixepoch') AS day, model,
                   COUNT(*) AS jobs,
                   SUM(state = 'completed') AS completed,
                   SUM(state = 'failed') AS failed,
                   SUM(CASE WHEN billing = 'charged' THEN credits ELSE 0 END) AS credits
            FROM jobs WHERE (? IS NULL OR key_id = ?) AND created_at >= ?
            GROUP BY day, model ORDER BY day, model"""
        rows = await self._fetch(sql, (key_id, key_id, since))
        return [UsageRow(day=r["day"], model=r["model"], jobs=r["jobs"],
                         completed=r["completed"], failed=r["failed"], credits=r["credits"])
                for r in rows]
