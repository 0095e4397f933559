"""PostgreSQL side of :class:`~muxproxy.store.tables.TableAccess`: whole tables read
a page at a time and loaded in one transaction (``muxproxy copy-db``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg

from muxproxy.store.postgres_tx import Db, pg
from muxproxy.store.sql import page_select, row_insert
from muxproxy.store.tables import Row, Table


class PostgresLoader:
    def __init__(self, db: Db) -> None:
        self.db = db
        self.loaded: set[str] = set()

    async def clear(self, table: str) -> None:
        # DELETE, not TRUNCATE: the triggers keeping job_counts and webhook_counts fire.
        await self.db.execute(f"DELETE FROM {table}")  # noqa: S608 - a name of STATE_TABLES

    async def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        await self.db.executemany(pg(row_insert(table, columns)), rows)
        if "id" in columns:
            self.loaded.add(table)

    async def finish(self) -> None:
        """Rows came with their ids: move each serial id's sequence past them, or the
        next row the gateway adds would collide."""
        for table in sorted(self.loaded):
            sequence = await self.db.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
            if sequence is not None:
                await self.db.execute(
                    f"SELECT setval($1, COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, "  # noqa: S608
                    f"false)", sequence)


class PostgresTables:
    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        raise NotImplementedError

    def _connection(self) -> AbstractAsyncContextManager[Db]:
        raise NotImplementedError

    async def columns(self, table: str) -> list[str]:
        rows = await self._fetch("SELECT column_name FROM information_schema.columns "
                                 "WHERE table_schema = current_schema() AND table_name = $1 "
                                 "ORDER BY ordinal_position", table)
        return [r[0] for r in rows]

    async def count_rows(self, table: str) -> int:
        rows = await self._fetch(f"SELECT COUNT(*) FROM {table}")  # noqa: S608
        return int(rows[0][0])

    async def read_rows(self, table: Table, columns: Sequence[str], after: Row | None,
                        limit: int) -> list[Row]:
        sql = pg(page_select(table.name, columns, table.order, after is not None))
        return [tuple(r) for r in await self._fetch(sql, *(after or ()), limit)]

    @asynccontextmanager
    async def loading(self) -> AsyncIterator[PostgresLoader]:
        async with self._connection() as db, db.transaction():
            loader = PostgresLoader(db)
            yield loader
            await loader.finish()
