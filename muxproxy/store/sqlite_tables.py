"""SQLite side of :class:`~muxproxy.store.tables.TableAccess`: whole tables read a
page at a time and loaded in one write transaction (``muxproxy copy-db``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import aiosqlite

from muxproxy.store.sql import page_select, row_insert
from muxproxy.store.sqlite_accounts import Connected
from muxproxy.store.tables import Row, Table


class SqliteLoader:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def clear(self, table: str) -> None:
        await self.db.execute(f"DELETE FROM {table}")  # noqa: S608 - a name of STATE_TABLES

    async def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        # A ledger row's explicit id moves AUTOINCREMENT's counter past it by itself.
        await self.db.executemany(row_insert(table, columns), rows)


class SqliteTables:
    async def columns(self: Connected, table: str) -> list[str]:
        return [r[1] for r in await self._fetch(f"PRAGMA table_info({table})")]

    async def count_rows(self: Connected, table: str) -> int:
        row = await self._fetch_one(f"SELECT COUNT(*) FROM {table}")  # noqa: S608
        return int(row[0]) if row else 0

    async def read_rows(self: Connected, table: Table, columns: Sequence[str],
                        after: Row | None, limit: int) -> list[Row]:
        sql = page_select(table.name, columns, table.order, after is not None)
        rows = await self._fetch(sql, (*(after or ()), limit))
        return [tuple(r) for r in rows]

    @asynccontextmanager
    async def loading(self: Connected) -> AsyncIterator[SqliteLoader]:
        async with self._write(transaction=True) as db:
            yield SqliteLoader(db)
