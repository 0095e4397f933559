"""The SQLite side of the retention sweep and of the readiness probe.

A job's ``swept`` column says what the sweep has deleted of its blobs: 0 nothing,
1 its uploaded inputs (a backstop for their deletion when the job ended), 2 its
inputs and its results (its retention passed). The partial index
``jobs_unswept`` holds only ended jobs not yet fully swept.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from muxproxy.pipeline.jobs import Job, JobState
from muxproxy.store.rows import job_from_row

T = TypeVar("T")
_UNSWEPT = (f"state IN ('{JobState.COMPLETED}', '{JobState.FAILED}') AND swept < 2")
_ENDED = f"SELECT * FROM jobs WHERE {_UNSWEPT} AND swept = 0"  # noqa: S608
_EXPIRED = f"SELECT * FROM jobs WHERE {_UNSWEPT} AND swept IN (0, 1) AND completed_at <= ?"  # noqa: S608
_AFTER = " AND (completed_at, id) > (?, ?)"
_PAGE = " ORDER BY completed_at, id LIMIT ?"


class SqliteRetention:
    async def _in_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def _in_writer(self, fn: Callable[[sqlite3.Connection], T], *,
                         transaction: bool = True) -> T:
        raise NotImplementedError

    async def ended_unswept(self, limit: int, after: tuple[int, str] | None = None
                            ) -> list[Job]:
        return await self._unswept(_ENDED, (), limit, after)

    async def expired_unswept(self, ended_before: int, limit: int,
                              after: tuple[int, str] | None = None) -> list[Job]:
        return await self._unswept(_EXPIRED, (ended_before,), limit, after)

    async def _unswept(self, sql: str, args: tuple[Any, ...], limit: int,
                       after: tuple[int, str] | None) -> list[Job]:
        if after is not None:
            sql, args = sql + _AFTER, (*args, *after)
        query, values = sql + _PAGE, (*args, limit)
        rows = await self._in_reader(lambda db: db.execute(query, values).fetchall())
        return [job_from_row(r) for r in rows]

    async def mark_swept(self, job_ids: Sequence[str], level: int) -> None:
        if not job_ids:
            return
        marks = ", ".join("?" for _ in job_ids)
        sql = (f"UPDATE jobs SET swept = ? WHERE swept < ? "  # noqa: S608
               f"AND id IN ({marks})")
        await self._in_writer(lambda db: db.execute(sql, (level, level, *job_ids)),
                              transaction=False)

    async def probe_write(self, now: int) -> None:
        await self._in_writer(lambda db: db.execute(
            "INSERT INTO store_probe (id, at) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET at = excluded.at", (now,)), transaction=False)
