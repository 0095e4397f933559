"""The webhook outbox on PostgreSQL, mixed into :class:`~muxproxy.store.postgres.PostgresStore`
(which owns the pool). A job's delivery is inserted by the rule that ends it, through
:meth:`PostgresTx.insert_deliveries <muxproxy.store.postgres_tx.PostgresTx.insert_deliveries>`."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from muxproxy.pipeline.jobs import Job
from muxproxy.store.postgres_tx import Db, pg
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

_PENDING = f"status = '{DeliveryStatus.PENDING}'"
# Due pending deliveries, unleased or with a lapsed lease, earliest first, leaving
# out the hosts and keys at their limits; rows another process is claiming are skipped.
_CLAIM = f"""
    WITH due AS (
        SELECT id FROM webhook_deliveries
        WHERE {_PENDING} AND next_attempt_at <= $3
            AND (lease_owner IS NULL OR lease_until < $3)
            AND host <> ALL($4::text[]) AND key_id <> ALL($5::text[])
        ORDER BY next_attempt_at LIMIT $6
        FOR UPDATE SKIP LOCKED)
    UPDATE webhook_deliveries d SET lease_owner = $1, lease_until = $2
    FROM due WHERE d.id = due.id
    RETURNING d.*"""  # noqa: S608 - constant fragments only
_REDELIVER = pg(INSERT_DELIVERY + """
    ON CONFLICT (job_id) DO UPDATE SET status = 'pending', round_attempts = 0,
        next_attempt_at = excluded.next_attempt_at, window_ends_at = NULL,
        last_error = NULL, updated_at = excluded.updated_at
    WHERE webhook_deliveries.status != 'pending'
    RETURNING *""")


class PostgresOutbox:
    def _connection(self) -> AbstractAsyncContextManager[Db]:
        raise NotImplementedError

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        raise NotImplementedError

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        raise NotImplementedError

    async def _execute(self, sql: str, *args: Any) -> int:
        raise NotImplementedError

    async def get_delivery(self, job_id: str, key_id: str | None = None) -> Delivery | None:
        row = await self._fetchrow("SELECT * FROM webhook_deliveries WHERE job_id = $1 "
                                   "AND ($2::text IS NULL OR key_id = $2)", job_id, key_id)
        return Delivery.from_row(row) if row else None

    async def scan_deliveries(self, *, after: str | None = None,
                              limit: int = 500) -> list[Delivery]:
        rows = await self._fetch("SELECT * FROM webhook_deliveries WHERE job_id > $1 "
                                 "ORDER BY job_id LIMIT $2", after or "", limit)
        return [Delivery.from_row(r) for r in rows]

    async def list_attempts(self, delivery_id: str) -> list[Attempt]:
        rows = await self._fetch("SELECT * FROM webhook_attempts WHERE delivery_id = $1 "
                                 "ORDER BY number", delivery_id)
        return [Attempt.from_row(r) for r in rows]

    async def claim_deliveries(self, now: int, limit: int, owner: str, lease_until: int,
                               skip_hosts: Sequence[str] = (),
                               skip_keys: Sequence[str] = ()) -> list[Delivery]:
        if limit <= 0:
            return []
        rows = await self._fetch(_CLAIM, owner, lease_until, now, list(skip_hosts),
                                 list(skip_keys), limit)
        return sorted((Delivery.from_row(r) for r in rows),
                      key=lambda d: d.next_attempt_at or 0)

    async def record_attempt(self, delivery_id: str, owner: str, attempt: Attempt,
                             verdict: Verdict, *, now: int,
                             keep: int | None = None) -> Delivery | None:
        async with self._connection() as db, db.transaction():
            row = await _record(db, delivery_id, owner, attempt, verdict, now, keep)
        return Delivery.from_row(row) if row else None

    async def release_delivery(self, delivery_id: str, owner: str) -> None:
        await self._execute("UPDATE webhook_deliveries SET lease_owner = NULL, "
                            "lease_until = NULL WHERE id = $1 AND lease_owner = $2",
                            delivery_id, owner)

    async def recover_deliveries(self, owner: str, now: int) -> int:
        # Lapsed leases only: another replica's attempt in flight keeps its lease.
        return await self._execute("UPDATE webhook_deliveries SET lease_owner = NULL, "
                                   "lease_until = NULL WHERE lease_owner IS NOT NULL "
                                   "AND lease_owner != $1 AND lease_until < $2", owner, now)

    async def redeliver(self, job: Job, *, now: int) -> Delivery:
        if job.callback_url is None or not job.is_terminal:
            raise ValueError(f"job {job.id} has no callback to deliver")
        # A pending delivery (waiting, or in flight) is left alone: one redelivery at
        # a time, and no resetting of its retry window.
        row = await self._fetchrow(_REDELIVER, *delivery_values(job, now))
        if row is None:
            current = await self.get_delivery(job.id)
            assert current is not None
            raise DeliveryPending(current)
        return Delivery.from_row(row)

    async def next_delivery_due(self, skip_hosts: Sequence[str] = (),
                                skip_keys: Sequence[str] = ()) -> int | None:
        row = await self._fetchrow(
            f"SELECT MIN(CASE WHEN lease_owner IS NULL THEN next_attempt_at "  # noqa: S608
            f"ELSE GREATEST(next_attempt_at, lease_until + 1) END) "
            f"FROM webhook_deliveries WHERE {_PENDING} AND host <> ALL($1::text[]) "
            f"AND key_id <> ALL($2::text[])", list(skip_hosts), list(skip_keys))
        return int(row[0]) if row and row[0] is not None else None

    async def delivery_backlog(self) -> Backlog:
        # The count is kept by triggers and the oldest found on a partial index.
        row = await self._fetchrow(
            f"SELECT (SELECT SUM(n)::bigint FROM webhook_counts WHERE {_PENDING}), "  # noqa: S608
            f"(SELECT MIN(created_at) FROM webhook_deliveries WHERE {_PENDING})")
        assert row is not None
        return Backlog(pending=int(row[0] or 0),
                       oldest_created_at=int(row[1]) if row[1] is not None else None)

    async def set_signing_secret(self, key_id: str, secret: str, *,
                                 now: int) -> SigningSecret:
        await self._execute(
            "INSERT INTO webhook_secrets (key_id, secret, created_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (key_id) DO UPDATE SET secret = excluded.secret, "
            "created_at = excluded.created_at", key_id, secret, now)
        return SigningSecret(key_id=key_id, secret=secret, created_at=now)

    async def signing_secret(self, key_id: str) -> SigningSecret | None:
        row = await self._fetchrow("SELECT * FROM webhook_secrets WHERE key_id = $1", key_id)
        if row is None:
            return None
        return SigningSecret(key_id=row["key_id"], secret=row["secret"],
                             created_at=row["created_at"])

    async def delete_signing_secret(self, key_id: str) -> bool:
        return await self._execute("DELETE FROM webhook_secrets WHERE key_id = $1",
                                   key_id) > 0


async def _record(db: Db, delivery_id: str, owner: str, attempt: Attempt,
                  verdict: Verdict, now: int, keep: int | None) -> asyncpg.Record | None:
    held = await db.fetchrow("SELECT attempts FROM webhook_deliveries "
                             "WHERE id = $1 AND lease_owner = $2 FOR UPDATE", delivery_id, owner)
    if held is None:
        return None
    number = int(held[0]) + 1
    await db.execute(
        "INSERT INTO webhook_attempts (delivery_id, number, started_at, latency_ms, "
        "status_code, error, response) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        delivery_id, number, attempt.started_at, attempt.latency_ms, attempt.status_code,
        attempt.error, attempt.response)
    if keep is not None:
        await db.execute("DELETE FROM webhook_attempts WHERE delivery_id = $1 "
                         "AND number <= $2", delivery_id, number - keep)
    delivered = now if verdict.status is DeliveryStatus.DELIVERED else None
    return await db.fetchrow(
        "UPDATE webhook_deliveries SET attempts = $1, round_attempts = round_attempts + 1, "
        "status = $2, next_attempt_at = $3, window_ends_at = $4, "
        "delivered_at = COALESCE($5, delivered_at), last_error = $6, updated_at = $7, "
        "lease_owner = NULL, lease_until = NULL WHERE id = $8 RETURNING *",
        number, verdict.status.value, verdict.next_attempt_at, verdict.window_ends_at,
        delivered, verdict.reason, now, delivery_id)


