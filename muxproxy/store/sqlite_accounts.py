"""SQLite side of the account store: keys, ledger, usage, idempotency, and the
billing moves that ride along with job transitions."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import aiosqlite

from muxproxy.jobs import IdempotencyClaim, JobState, RowLike
from muxproxy.keys import KEY_ID_PREFIX
from muxproxy.store.accounts import (
    NO_LIMITS,
    ApiKey,
    Billing,
    ConcurrencyLimitReached,
    IdempotencyRecord,
    IdempotencySuperseded,
    InsufficientBalance,
    KeyExists,
    KeyLimits,
    KeyNotFound,
    LedgerEntry,
    LedgerKind,
    UsageRow,
)

T = TypeVar("T")


class Connected(Protocol):
    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[aiosqlite.Row]: ...

    async def _fetch_one(self, sql: str, args: Sequence[Any] = ()) -> aiosqlite.Row | None: ...

    def _write(self, transaction: bool = False
               ) -> AbstractAsyncContextManager[aiosqlite.Connection]: ...

    async def _in_writer(self, fn: Callable[[sqlite3.Connection], T], *,
                         transaction: bool = True) -> T: ...

    async def _in_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


# The helpers below run inside a write transaction, in the writer's thread (see
# SqliteStore._in_writer): plain sqlite3 calls, no thread hop per statement.

def ledger_row(db: sqlite3.Connection, key_id: str, kind: LedgerKind, amount: int,
               now: int, *, job_id: str | None = None, model: str | None = None,
               note: str | None = None) -> None:
    """Append a ledger row and move the key's balance by the same amount."""
    db.execute("INSERT INTO ledger (key_id, kind, amount, job_id, model, note, created_at)"
               " VALUES (?, ?, ?, ?, ?, ?, ?)",
               (key_id, kind.value, amount, job_id, model, note, now))
    db.execute("UPDATE api_keys SET balance = balance + ? WHERE id = ?", (amount, key_id))


def hold(db: sqlite3.Connection, key_id: str, job_id: str, model: str, price: int,
         now: int) -> None:
    """Reserve a new job's price: refused when the balance is short, unless unlimited."""
    row = db.execute("SELECT balance, unlimited FROM api_keys WHERE id = ?",
                     (key_id,)).fetchone()
    if row is None:
        raise KeyNotFound(key_id)
    if not row["unlimited"] and row["balance"] < price:
        raise InsufficientBalance(row["balance"], price)
    ledger_row(db, key_id, LedgerKind.HOLD, -price, now, job_id=job_id, model=model)


def bind_idempotency(db: sqlite3.Connection, claim: IdempotencyClaim, job_id: str) -> None:
    """Bind a reserved Idempotency-Key to the job being inserted, in its transaction:
    a crash leaves either both or neither."""
    cur = db.execute("UPDATE idempotency SET job_id = ?, claim = NULL WHERE key_id = ? "
                     "AND idem_key = ? AND claim = ? AND job_id IS NULL",
                     (job_id, claim.key_id, claim.idem_key, claim.token))
    if cur.rowcount != 1:
        raise IdempotencySuperseded(claim.idem_key)


def check_concurrency(db: sqlite3.Connection, key_id: str, limit: int) -> None:
    row = db.execute("SELECT COUNT(*) FROM jobs WHERE key_id = ? AND state IN "
                     "('pending', 'processing')", (key_id,)).fetchone()
    if row is not None and row[0] >= limit:
        raise ConcurrencyLimitReached(limit)


def settle(db: sqlite3.Connection, rows: Iterable[RowLike], now: int) -> None:
    """Billing for jobs that just changed state, inside the same transaction.

    Each move is a compare-and-swap on the job's billing state, so it happens at
    most once; the ledger's unique index backs that up.
    """
    for row in rows:
        billing, state = row["billing"], row["state"]
        if billing == Billing.HELD and state == JobState.PROCESSING:
            moves = [(LedgerKind.RELEASE, row["credits"]), (LedgerKind.CHARGE, -row["credits"])]
            target = Billing.CHARGED
        elif billing == Billing.HELD and state == JobState.FAILED:
            moves, target = [(LedgerKind.RELEASE, row["credits"])], Billing.RELEASED
        elif billing == Billing.CHARGED and state == JobState.FAILED:
            moves, target = [(LedgerKind.REFUND, row["credits"])], Billing.REFUNDED
        else:
            continue
        cur = db.execute("UPDATE jobs SET billing = ? WHERE id = ? AND billing = ?",
                         (target.value, row["id"], billing))
        if cur.rowcount != 1:
            continue
        for kind, amount in moves:
            ledger_row(db, row["key_id"], kind, amount, now, job_id=row["id"],
                       model=row["model"])


def _key(row: RowLike) -> ApiKey:
    models, networks = row["allowed_models"], row["webhook_allow_networks"]
    return ApiKey(id=row["id"], name=row["name"], created_at=row["created_at"],
                  revoked_at=row["revoked_at"], balance=row["balance"],
                  limits=KeyLimits(unlimited=bool(row["unlimited"]), rpm_limit=row["rpm_limit"],
                                   max_concurrent=row["max_concurrent"],
                                   allowed_models=tuple(json.loads(models)) if models else None,
                                   webhook_allow_networks=tuple(json.loads(networks))
                                   if networks else ()))


# The api_keys columns that hold a key's limits, in _limit_values' order.
_LIMIT_COLUMNS = ("unlimited", "rpm_limit", "max_concurrent", "allowed_models",
                  "webhook_allow_networks")


def _limit_values(limits: KeyLimits) -> tuple[Any, ...]:
    models = json.dumps(list(limits.allowed_models)) if limits.allowed_models is not None \
        else None
    networks = json.dumps(list(limits.webhook_allow_networks)) \
        if limits.webhook_allow_networks else None
    return int(limits.unlimited), limits.rpm_limit, limits.max_concurrent, models, networks


_INSERT_KEY = (f"INSERT INTO api_keys (id, name, key_hash, created_at, "  # noqa: S608
               f"{', '.join(_LIMIT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_SET_LIMITS = ", ".join(f"{column} = ?" for column in _LIMIT_COLUMNS)


class AccountsMixin:
    async def upsert_key(self: Connected, name: str, key_hash: str, *, now: int,
                         limits: KeyLimits = NO_LIMITS, initial_credits: int = 0) -> ApiKey:
        def upsert(db: sqlite3.Connection) -> RowLike:
            existing = db.execute("SELECT id FROM api_keys WHERE name = ?", (name,)).fetchone()
            if existing is None:
                key_id = f"{KEY_ID_PREFIX}{secrets.token_hex(8)}"
                db.execute(
                    _INSERT_KEY,
                    (key_id, name, key_hash, now, *_limit_values(limits)))
                if initial_credits:
                    ledger_row(db, key_id, LedgerKind.TOPUP, initial_credits, now,
                               note="initial credits from config")
            else:
                key_id = existing["id"]
                db.execute(f"UPDATE api_keys SET key_hash = ?, {_SET_LIMITS} WHERE id = ?",  # noqa: S608
                           (key_hash, *_limit_values(limits), key_id))
            row: RowLike = db.execute("SELECT * FROM api_keys WHERE id = ?",
                                      (key_id,)).fetchone()
            return row

        return _key(await self._in_writer(upsert))

    async def create_key(self: Connected, name: str, key_hash: str, *, now: int,
                         limits: KeyLimits = NO_LIMITS, credits: int = 0) -> ApiKey:
        key_id = f"{KEY_ID_PREFIX}{secrets.token_hex(8)}"

        def create(db: sqlite3.Connection) -> RowLike:
            try:
                db.execute(
                    _INSERT_KEY,
                    (key_id, name, key_hash, now, *_limit_values(limits)))
            except sqlite3.IntegrityError:
                raise KeyExists(name) from None
            if credits:
                ledger_row(db, key_id, LedgerKind.TOPUP, credits, now, note="initial credits")
            row: RowLike = db.execute("SELECT * FROM api_keys WHERE id = ?",
                                      (key_id,)).fetchone()
            return row

        return _key(await self._in_writer(create))

    async def key_by_hash(self: Connected, key_hash: str) -> ApiKey | None:
        # On the loop's thread, one indexed lookup: a key check never waits in the
        # aiosqlite reader's queue behind slower reads (usage, ledgers, listings).
        row = await self._in_reader(lambda db: db.execute(
            "SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone())
        return _key(row) if row else None

    async def get_key(self: Connected, key_id: str) -> ApiKey | None:
        row = await self._fetch_one("SELECT * FROM api_keys WHERE id = ? OR name = ?",
                                    (key_id, key_id))
        return _key(row) if row else None

    async def list_keys(self: Connected) -> list[ApiKey]:
        return [_key(r) for r in await self._fetch("SELECT * FROM api_keys "
                                                   "ORDER BY created_at, name")]

    async def update_key(self: Connected, key_id: str, limits: KeyLimits) -> ApiKey:
        async with self._write() as db, db.execute(
                f"UPDATE api_keys SET {_SET_LIMITS} WHERE id = ? OR name = ? RETURNING *",  # noqa: S608
                (*_limit_values(limits), key_id, key_id)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise KeyNotFound(key_id)
        return _key(row)

    async def revoke_key(self: Connected, key_id: str, *, now: int) -> ApiKey:
        async with self._write() as db, db.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) "
                "WHERE id = ? OR name = ? RETURNING *", (now, key_id, key_id)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise KeyNotFound(key_id)
        return _key(row)

    async def topup(self: Connected, key_id: str, amount: int, *, now: int,
                    note: str | None = None) -> ApiKey:
        def add(db: sqlite3.Connection) -> RowLike:
            found = db.execute("SELECT id FROM api_keys WHERE id = ? OR name = ?",
                               (key_id, key_id)).fetchone()
            if found is None:
                raise KeyNotFound(key_id)
            kind = LedgerKind.TOPUP if amount > 0 else LedgerKind.DEDUCT
            ledger_row(db, found["id"], kind, amount, now, note=note)
            row: RowLike = db.execute("SELECT * FROM api_keys WHERE id = ?",
                                      (found["id"],)).fetchone()
            return row

        return _key(await self._in_writer(add))

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

    async def usage(self: Connected, key_id: str, *, since: int) -> list[UsageRow]:
        sql = """
            SELECT date(created_at / 1000, 'unixepoch') AS day, model,
                   COUNT(*) AS jobs,
                   SUM(state = 'completed') AS completed,
                   SUM(state = 'failed') AS failed,
                   SUM(CASE WHEN billing = 'charged' THEN credits ELSE 0 END) AS credits
            FROM jobs WHERE key_id = ? AND created_at >= ?
            GROUP BY day, model ORDER BY day, model"""
        rows = await self._fetch(sql, (key_id, since))
        return [UsageRow(day=r["day"], model=r["model"], jobs=r["jobs"],
                         completed=r["completed"], failed=r["failed"], credits=r["credits"])
                for r in rows]

    async def idempotency_begin(self: Connected, key_id: str, idem_key: str, request_hash: str,
                                *, now: int, ttl_ms: int, owner: str,
                                create_step_ms: int) -> IdempotencyClaim | IdempotencyRecord:
        claim = IdempotencyClaim(key_id, idem_key, secrets.token_hex(8))

        def begin(db: sqlite3.Connection) -> IdempotencyClaim | IdempotencyRecord:
            # Expired records go lazily: this key's, plus a bounded batch of others.
            db.execute("DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? "
                       "AND expires_at <= ?", (key_id, idem_key, now))
            db.execute("DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM "
                       "idempotency WHERE expires_at <= ? LIMIT 100)", (now,))
            row = db.execute(
                "SELECT i.*, j.id IS NOT NULL AS job_exists FROM idempotency i "
                "LEFT JOIN jobs j ON j.id = i.job_id WHERE i.key_id = ? AND i.idem_key = ?",
                (key_id, idem_key)).fetchone()
            if row is None:
                db.execute("INSERT INTO idempotency (key_id, idem_key, request_hash, claim, "
                           "owner, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (key_id, idem_key, request_hash, claim.token, owner, now,
                            now + ttl_ms))
                return claim
            if row["job_id"] is not None and row["job_exists"]:
                return IdempotencyRecord(request_hash=row["request_hash"], job_id=row["job_id"])
            in_create_step = row["job_id"] is None and row["owner"] == owner \
                and row["created_at"] > now - create_step_ms
            if in_create_step:
                return IdempotencyRecord(request_hash=row["request_hash"], job_id=None)
            # Nothing was created under it (a crash, or a request that never came
            # back): the key starts over with this request.
            db.execute("UPDATE idempotency SET request_hash = ?, job_id = NULL, claim = ?, "
                       "owner = ?, created_at = ?, expires_at = ? "
                       "WHERE key_id = ? AND idem_key = ?",
                       (request_hash, claim.token, owner, now, now + ttl_ms, key_id, idem_key))
            return claim

        return await self._in_writer(begin)

    async def idempotency_release(self: Connected, claim: IdempotencyClaim) -> None:
        def release(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? "
                       "AND claim = ? AND job_id IS NULL",
                       (claim.key_id, claim.idem_key, claim.token))

        await self._in_writer(release)
