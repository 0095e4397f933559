"""The SQL both backends share, written with SQLite's ``?`` placeholders (the
PostgreSQL backend numbers them with :func:`muxproxy.store.postgres_tx.pg`), and the
values that go with it. JSON columns travel as text on both."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from muxproxy.pipeline.jobs import Job, JobState
from muxproxy.store.accounts import KeyLimits
from muxproxy.store.jobs import JobQuery
from muxproxy.store.rows import JSON_COLUMNS
from muxproxy.webhooks.outbox import new_delivery_id, target_host

# A lapsed lease a claim takes over from another owner: a job not yet started, or
# one the upstream has (it resumes polling). A job in processing without an upstream
# id had its submit cut off: Store.recover takes it first, counting the interruption.
TAKEN_OVER = f"(state = '{JobState.PENDING}' OR upstream_id IS NOT NULL)"


def job_search(query: JobQuery) -> tuple[str, list[Any]]:
    """:meth:`~muxproxy.store.jobs.JobStore.find_jobs` as one statement and its values."""
    where: list[str] = []
    args: list[Any] = []
    for column, op, value in (("key_id", "=", query.key_id),
                              ("state", "=", query.state and query.state.value),
                              ("model", "=", query.model), ("provider", "=", query.provider),
                              ("created_at", ">=", query.since)):
        if value is not None:
            where.append(f"{column} {op} ?")
            args.append(value)
    if query.before is not None and query.before_id is not None:
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        args.extend((query.before, query.before, query.before_id))
    elif query.before is not None:
        where.append("created_at < ?")
        args.append(query.before)
    sql = "SELECT * FROM jobs"  # column names and operators are the constants above
    if where:
        sql += " WHERE " + " AND ".join(where)
    args.append(query.limit)
    return sql + " ORDER BY created_at DESC, id DESC LIMIT ?", args


def encoded(values: Mapping[str, Any]) -> dict[str, Any]:
    """Job column values as stored: JSON columns as text."""
    return {k: (orjson.dumps(v).decode() if k in JSON_COLUMNS and v is not None else v)
            for k, v in values.items()}


def job_update(job_id: str, expected: JobState | None, owner: str | None,
               stored: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The UPDATE of a job's columns, guarded by its expected state and lease owner."""
    sql = f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in stored)} WHERE id = ?"  # noqa: S608
    args = [*stored.values(), job_id]
    if expected is not None:
        sql += " AND state = ?"
        args.append(expected.value)
    if owner is not None:
        sql += " AND lease_owner = ?"
        args.append(owner)
    return sql, args


# The api_keys columns that hold a key's limits, in limit_values' order.
_LIMIT_COLUMNS = ("unlimited", "rpm_limit", "max_concurrent", "allowed_models",
                  "webhook_allow_networks")


def limit_values(limits: KeyLimits) -> tuple[Any, ...]:
    models = json.dumps(list(limits.allowed_models)) if limits.allowed_models is not None \
        else None
    networks = json.dumps(list(limits.webhook_allow_networks)) \
        if limits.webhook_allow_networks else None
    return int(limits.unlimited), limits.rpm_limit, limits.max_concurrent, models, networks


INSERT_KEY = (f"INSERT INTO api_keys (id, name, key_hash, created_at, "  # noqa: S608
              f"{', '.join(_LIMIT_COLUMNS)}) "
              f"VALUES (?, ?, ?, ?, {', '.join('?' for _ in _LIMIT_COLUMNS)})")
SET_LIMITS = ", ".join(f"{column} = ?" for column in _LIMIT_COLUMNS)


def key_update(key_id: str, limits: KeyLimits,
               key_hash: str | None = None) -> tuple[str, list[Any]]:
    """The UPDATE of a key's limits (and hash, if given), returning the row."""
    sets, args = SET_LIMITS, [*limit_values(limits)]
    if key_hash is not None:
        sets, args = f"key_hash = ?, {sets}", [key_hash, *args]
    return f"UPDATE api_keys SET {sets} WHERE id = ? RETURNING *", [*args, key_id]  # noqa: S608


INSERT_DELIVERY = """
    INSERT INTO webhook_deliveries (id, job_id, key_id, url, host, status, created_at,
                                    updated_at, next_attempt_at)
    VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)"""


def delivery_values(job: Job, now: int) -> tuple[Any, ...]:
    """A new pending delivery of ``job``'s callback, due at ``now``: INSERT_DELIVERY's values."""
    url = job.callback_url
    assert url is not None
    return (new_delivery_id(), job.id, job.key_id, url, target_host(url), now, now, now)


def page_select(table: str, columns: Sequence[str], order: Sequence[str],
                after: bool) -> str:
    """One page of a table's rows in ``order``: past a row value when ``after``, then
    a limit (copy-db; the names come from :mod:`muxproxy.store.tables`)."""
    keys = ", ".join(order)
    where = f" WHERE ({keys}) > ({', '.join('?' for _ in order)})" if after else ""
    return (f"SELECT {', '.join(columns)} FROM {table}{where} "  # noqa: S608
            f"ORDER BY {keys} LIMIT ?")


def row_insert(table: str, columns: Sequence[str]) -> str:
    return (f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
            f"VALUES ({', '.join('?' for _ in columns)})")

# An idempotency record, and whether the job it names exists yet.
SELECT_IDEMPOTENCY = ("SELECT i.*, j.id IS NOT NULL AS job_exists FROM idempotency i "
                      "LEFT JOIN jobs j ON j.id = i.job_id WHERE i.key_id = ? AND i.idem_key = ?")
