"""SQLite's :class:`~muxproxy.store.tx.Tx`: plain ``sqlite3`` calls on the writer,
run inside a group commit on the loop's thread (see ``SqliteStore._in_writer``), so
none of its methods ever suspends."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

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

ACTIVE = f"state IN ('{JobState.PENDING}', '{JobState.PROCESSING}')"
_EXPIRE = f"""
    UPDATE jobs SET {{}}
    WHERE id IN (
        SELECT id FROM jobs WHERE {ACTIVE} AND deadline_at <= ?
        AND (lease_owner IS NULL OR lease_until < ?) LIMIT ?)
    RETURNING *"""  # noqa: S608 - constant fragments only


# The JSON columns a new row sets (the others start NULL).
_NEW_JSON = ("params", "client_params")


@functools.lru_cache(maxsize=8)
def _insert_sql(columns: tuple[str, ...]) -> str:
    return (f"INSERT INTO jobs ({', '.join(columns)}) "  # noqa: S608 - column names
            f"VALUES ({', '.join('?' for _ in columns)})")


class SqliteTx(Tx):
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    async def insert_job(self, row: Mapping[str, Any]) -> Job:
        stored = dict(row)
        for column in _NEW_JSON:
            stored[column] = orjson.dumps(stored[column]).decode()
        self.db.execute(_insert_sql(tuple(stored)), tuple(stored.values()))
        # The row as stored, without reading it back: what was written, and the
        # columns' defaults.
        return job_from_row(NEW_JOB_DEFAULTS | stored)

    async def update_job(self, job_id: str, expected: JobState | None, owner: str | None,
                         values: Mapping[str, Any], *, after: Job | None = None) -> Job | None:
        sql, args = job_update(job_id, expected, owner, encoded(values))
        try:
            if after is not None:
                return after if self.db.execute(sql, args).rowcount == 1 else None
            row = self.db.execute(sql + " RETURNING *", args).fetchone()
        except sqlite3.IntegrityError as exc:
            if "illegal transition" in str(exc) and expected is not None:
                raise IllegalTransition(job_id, expected, JobState(values["state"])) from None
            raise
        return job_from_row(row) if row is not None else None

    async def active_jobs(self, key_id: str) -> int:
        row = self.db.execute(f"SELECT COUNT(*) FROM jobs WHERE key_id = ? AND {ACTIVE}",  # noqa: S608
                              (key_id,)).fetchone()
        return int(row[0])

    async def fail_overdue(self, now: int, limit: int, values: Mapping[str, Any]) -> list[Job]:
        stored = encoded(values)
        sql = _EXPIRE.format(", ".join(f"{k} = ?" for k in stored))
        rows = self.db.execute(sql, (*stored.values(), now, now, limit)).fetchall()
        return [job_from_row(r) for r in rows]

    async def orphaned(self, owner: str, now: int) -> list[Job]:
        # Lapsed leases only, as on PostgreSQL: a second process on the same file
        # (an operator's mistake, or a restart while the old one still drains) keeps
        # the jobs it renews.
        rows = self.db.execute(f"SELECT * FROM jobs WHERE lease_owner IS NOT NULL "  # noqa: S608
                               f"AND lease_owner != ? AND lease_until <= ? AND {ACTIVE}",
                               (owner, now)).fetchall()
        return [job_from_row(r) for r in rows]

    async def set_billing(self, job_id: str, expected: str, target: str) -> bool:
        return self.db.execute("UPDATE jobs SET billing = ? WHERE id = ? AND billing = ?",
                               (target, job_id, expected)).rowcount == 1

    async def funds(self, key_id: str) -> tuple[int, bool] | None:
        row = self.db.execute("SELECT balance, unlimited FROM api_keys WHERE id = ?",
                              (key_id,)).fetchone()
        return (row[0], bool(row[1])) if row else None

    async def key(self, key_id: str) -> ApiKey | None:
        row = self.db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return key_from_row(row) if row else None

    async def key_named(self, name: str) -> ApiKey | None:
        row = self.db.execute("SELECT * FROM api_keys WHERE name = ?", (name,)).fetchone()
        return key_from_row(row) if row else None

    async def insert_key(self, key_id: str, name: str, key_hash: str, now: int,
                         limits: KeyLimits) -> None:
        try:
            self.db.execute(INSERT_KEY, (key_id, name, key_hash, now, *limit_values(limits)))
        except sqlite3.IntegrityError:
            raise KeyExists(name) from None

    async def set_key(self, key_id: str, limits: KeyLimits,
                      key_hash: str | None = None) -> ApiKey | None:
        sql, args = key_update(key_id, limits, key_hash)
        row = self.db.execute(sql, args).fetchone()
        return key_from_row(row) if row else None

    async def add_ledger(self, key_id: str, kind: LedgerKind, amount: int, now: int, *,
                         job_id: str | None = None, model: str | None = None,
                         note: str | None = None) -> None:
        self.db.execute("INSERT INTO ledger (key_id, kind, amount, job_id, model, note, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key_id, kind.value, amount, job_id, model, note, now))
        self.db.execute("UPDATE api_keys SET balance = balance + ? WHERE id = ?",
                        (amount, key_id))

    async def purge_idempotency(self, key_id: str, idem_key: str, now: int) -> None:
        self.db.execute("DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? "
                        "AND expires_at <= ?", (key_id, idem_key, now))
        self.db.execute("DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM "
                        "idempotency WHERE expires_at <= ? LIMIT 100)", (now,))

    async def idempotency(self, key_id: str, idem_key: str) -> IdempotencyRow | None:
        row = self.db.execute(SELECT_IDEMPOTENCY, (key_id, idem_key)).fetchone()
        return None if row is None else idempotency_from_row(row)

    async def put_idempotency(self, claim: IdempotencyClaim, request_hash: str, owner: str,
                              now: int, expires_at: int) -> None:
        self.db.execute(
            "INSERT INTO idempotency (key_id, idem_key, request_hash, claim, owner, "
            "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key_id, idem_key) DO UPDATE SET request_hash = excluded.request_hash, "
            "job_id = NULL, claim = excluded.claim, owner = excluded.owner, "
            "created_at = excluded.created_at, expires_at = excluded.expires_at",
            (claim.key_id, claim.idem_key, request_hash, claim.token, owner, now, expires_at))

    async def bind_idempotency(self, claim: IdempotencyClaim, job_id: str) -> bool:
        return self.db.execute(
            "UPDATE idempotency SET job_id = ?, claim = NULL WHERE key_id = ? "
            "AND idem_key = ? AND claim = ? AND job_id IS NULL",
            (job_id, claim.key_id, claim.idem_key, claim.token)).rowcount == 1

    async def drop_idempotency(self, claim: IdempotencyClaim) -> None:
        self.db.execute("DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? "
                        "AND claim = ? AND job_id IS NULL",
                        (claim.key_id, claim.idem_key, claim.token))

    async def insert_deliveries(self, jobs: Sequence[Job], now: int) -> None:
        self.db.executemany(INSERT_DELIVERY + " ON CONFLICT (job_id) DO NOTHING",
                            [delivery_values(job, now) for job in jobs
                             if job.callback_url is not None])
