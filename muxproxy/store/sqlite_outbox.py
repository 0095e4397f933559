"""The webhook outbox on SQLite, mixed into :class:`~muxproxy.store.sqlite.SqliteStore`
(which owns the connections). A job's delivery is inserted by the rule that ends it,
through :meth:`SqliteTx.insert_deliveries <muxproxy.store.sqlite_tx.SqliteTx.insert_deliveries>`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import aiosqlite

from muxproxy.pipeline.jobs import Job
from muxproxy.store.sql import INSERT_DELIVERY, delivery_values
from muxproxy.webhooks.outbox import (
    Attempt,
    Backlog,
    Delivery,
    DeliveryPending,
    DeliveryStatus,
    SigningSecret,
    Verdict,
)

T = TypeVar("T")
_PENDING = f"status = '{DeliveryStatus.PENDING}'"
class SqliteOutbox:
    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        raise NotImplementedError

    async def _fetch_one(self, sql: str, args: Sequence[Any] = ()) -> aiosqlite.Row | None:
        raise NotImplementedError

    def _write(self, transaction: bool = False
               ) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError

    async def _in_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def _in_writer(self, fn: Callable[[sqlite3.Connection], T], *,
                         transaction: bool = True) -> T:
        raise NotImplementedError

    async def get_delivery(self, job_id: str, key_id: str | None = None) -> Delivery | None:
        sql, args = "SELECT * FROM webhook_deliveries WHERE job_id = ?", [job_id]
        if key_id is not None:
            sql += " AND key_id = ?"
            args.append(key_id)
        row = await self._fetch_one(sql, args)
        return Delivery.from_row(row) if row else None

    async def scan_deliveries(self, *, after: str | None = None,
                              limit: int = 500) -> list[Delivery]:
        rows = await self._fetch("SELECT * FROM webhook_deliveries WHERE job_id > ? "
                                 "ORDER BY job_id LIMIT ?", (after or "", limit))
        return [Delivery.from_row(r) for r in rows]

    async def list_attempts(self, delivery_id: str) -> list[Attempt]:
        rows = await self._fetch("SELECT * FROM webhook_attempts WHERE delivery_id = ? "
                                 "ORDER BY number", (delivery_id,))
        return [Attempt.from_row(r) for r in rows]

    async def claim_deliveries(self, now: int, limit: int, owner: str, lease_until: int,
                               skip_hosts: Sequence[str] = (),
                               skip_keys: Sequence[str] = ()) -> list[Delivery]:
        if limit <= 0:
            return []
        skip = _not_in("host", skip_hosts) + _not_in("key_id", skip_keys)
        sql = f"""
            UPDATE webhook_deliveries SET lease_owner = ?, lease_until = ?
            WHERE id IN (
                SELECT id FROM webhook_deliveries
                WHERE {_PENDING} AND next_attempt_at <= ?
                AND (lease_owner IS NULL OR lease_until < ?) {skip}
                ORDER BY next_attempt_at LIMIT ?)
            RETURNING *"""  # noqa: S608 - constant fragments and placeholders only
        args = (owner, lease_until, now, now, *skip_hosts, *skip_keys, limit)
        rows = await self._in_writer(lambda db: db.execute(sql, args).fetchall(),
                                     transaction=False)
        return sorted((Delivery.from_row(r) for r in rows),
                      key=lambda d: d.next_attempt_at or 0)

    async def record_attempt(self, delivery_id: str, owner: str, attempt: Attempt,
                             verdict: Verdict, *, now: int,
                             keep: int | None = None) -> Delivery | None:
        def record(db: sqlite3.Connection) -> Any:
            held = db.execute("SELECT attempts FROM webhook_deliveries "
                              "WHERE id = ? AND lease_owner = ?", (delivery_id, owner)).fetchone()
            if held is None:
                return None
            number = int(held[0]) + 1
            db.execute(
                "INSERT INTO webhook_attempts (delivery_id, number, started_at, latency_ms, "
                "status_code, error, response) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (delivery_id, number, attempt.started_at, attempt.latency_ms,
                 attempt.status_code, attempt.error, attempt.response))
            if keep is not None:
                db.execute("DELETE FROM webhook_attempts WHERE delivery_id = ? AND number <= ?",
                           (delivery_id, number - keep))
            delivered = now if verdict.status is DeliveryStatus.DELIVERED else None
            return db.execute(
                "UPDATE webhook_deliveries SET attempts = ?, "
                "round_attempts = round_attempts + 1, status = ?, next_attempt_at = ?, "
                "window_ends_at = ?, delivered_at = COALESCE(?, delivered_at), "
                "last_error = ?, updated_at = ?, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ? RETURNING *",
                (number, verdict.status.value, verdict.next_attempt_at,
                 verdict.window_ends_at, delivered, verdict.reason, now,
                 delivery_id)).fetchone()

        row = await self._in_writer(record)
        return Delivery.from_row(row) if row else None

    async def release_delivery(self, delivery_id: str, owner: str) -> None:
        await self._in_writer(lambda db: db.execute(
            "UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL "
            "WHERE id = ? AND lease_owner = ?", (delivery_id, owner)), transaction=False)

    async def recover_deliveries(self, owner: str, now: int) -> int:
        # Lapsed leases only, as on PostgreSQL: another process's attempt in flight
        # keeps its lease.
        async with self._write() as db:
            cur = await db.execute("UPDATE webhook_deliveries SET lease_owner = NULL, "
                                   "lease_until = NULL WHERE lease_owner IS NOT NULL "
                                   "AND lease_owner != ? AND lease_until < ?", (owner, now))
            return cur.rowcount

    async def redeliver(self, job: Job, *, now: int) -> Delivery:
        if job.callback_url is None or not job.is_terminal:
            raise ValueError(f"job {job.id} has no callback to deliver")
        # A pending delivery (waiting, or in flight) is left alone: one redelivery at
        # a time, and no resetting of its retry window.
        sql = INSERT_DELIVERY + """
            ON CONFLICT (job_id) DO UPDATE SET status = 'pending', round_attempts = 0,
                next_attempt_at = excluded.next_attempt_at, window_ends_at = NULL,
                last_error = NULL, updated_at = excluded.updated_at
            WHERE webhook_deliveries.status != 'pending'
            RETURNING *"""
        args = delivery_values(job, now)
        row = await self._in_writer(lambda db: db.execute(sql, args).fetchone())
        if row is None:
            current = await self.get_delivery(job.id)
            assert current is not None
            raise DeliveryPending(current)
        return Delivery.from_row(row)

    async def next_delivery_due(self, skip_hosts: Sequence[str] = (),
                                skip_keys: Sequence[str] = ()) -> int | None:
        sql = (f"SELECT MIN(CASE WHEN lease_owner IS NULL THEN next_attempt_at "  # noqa: S608
               f"ELSE MAX(next_attempt_at, lease_until + 1) END) "
               f"FROM webhook_deliveries WHERE {_PENDING} {_not_in('host', skip_hosts)} "
               f"{_not_in('key_id', skip_keys)}")
        row = await self._fetch_one(sql, (*skip_hosts, *skip_keys))
        return int(row[0]) if row and row[0] is not None else None

    async def delivery_backlog(self) -> Backlog:
        # The count is kept by triggers and the oldest found on a partial index: two
        # lookups, whatever the size of the backlog (they run on every scrape).
        sql = (f"SELECT (SELECT n FROM webhook_counts WHERE {_PENDING}), "  # noqa: S608
               f"(SELECT MIN(created_at) FROM webhook_deliveries WHERE {_PENDING})")
        row = await self._in_reader(lambda db: db.execute(sql).fetchone())
        assert row is not None
        return Backlog(pending=int(row[0] or 0),
                       oldest_created_at=int(row[1]) if row[1] is not None else None)

    async def set_signing_secret(self, key_id: str, secret: str, *,
                                 now: int) -> SigningSecret:
        async with self._write() as db:
            await db.execute(
                "INSERT INTO webhook_secrets (key_id, secret, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key_id) DO UPDATE SET secret = excluded.secret, "
                "created_at = excluded.created_at", (key_id, secret, now))
        return SigningSecret(key_id=key_id, secret=secret, created_at=now)

    async def signing_secret(self, key_id: str) -> SigningSecret | None:
        row = await self._in_reader(lambda db: db.execute(
            "SELECT * FROM webhook_secrets WHERE key_id = ?", (key_id,)).fetchone())
        if row is None:
            return None
        return SigningSecret(key_id=row["key_id"], secret=row["secret"],
                             created_at=row["created_at"])

    async def delete_signing_secret(self, key_id: str) -> bool:
        async with self._write() as db:
            cur = await db.execute("DELETE FROM webhook_secrets WHERE key_id = ?", (key_id,))
            return cur.rowcount > 0


def _not_in(column: str, values: Sequence[str]) -> str:
    if not values:
        return ""
    return f" AND {column} NOT IN ({', '.join('?' for _ in values)})"
