"""The tables that hold the gateway's state, and what a backend offers to read and
load them whole: ``muxproxy copy-db`` (:mod:`muxproxy.store.copy`) moves a database
from one backend to another with them.

Both backends have the same tables and columns (``schema.py``, ``pg_schema.py``),
JSON columns as text going in and coming out, so a row read from one is a row for
the other. Left out: what the target makes for itself, the counts kept by triggers
(``job_counts``, ``webhook_counts``), the readiness probe and the schema version.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Table:
    name: str
    # A unique key: rows are read in its order, a page at a time.
    order: tuple[str, ...]


# Parents before children (their foreign keys), so a load never refers ahead.
STATE_TABLES: tuple[Table, ...] = (
    Table("api_keys", ("id",)),           # keys as their SHA-256 digests, with balances
    Table("webhook_secrets", ("key_id",)),
    Table("ledger", ("id",)),
    Table("jobs", ("id",)),
    Table("idempotency", ("key_id", "idem_key")),
    Table("webhook_deliveries", ("id",)),
    Table("webhook_attempts", ("delivery_id", "number")),
)


class TableLoader(Protocol):
    """Writes inside one transaction: it commits when the loading ends, or not at all."""

    async def clear(self, table: str) -> None: ...

    async def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None: ...


@runtime_checkable
class TableAccess(Protocol):
    async def columns(self, table: str) -> list[str]:
        """The table's column names, in the table's order."""

    async def count_rows(self, table: str) -> int: ...

    async def read_rows(self, table: Table, columns: Sequence[str], after: Row | None,
                        limit: int) -> list[Row]:
        """Up to ``limit`` rows past ``after`` (a value of ``table.order``), in that order."""

    def loading(self) -> AbstractAsyncContextManager[TableLoader]: ...
