"""Rows to records, for every backend: a job's JSON columns may come back as text
(SQLite) or already decoded (a driver that reads ``jsonb`` as a dict, the memory
backend); both map to the same :class:`~muxproxy.pipeline.jobs.Job`."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

import orjson

from muxproxy.generation import GenerationRequest
from muxproxy.pipeline.jobs import Job, JobResult, JobState, RowLike, built
from muxproxy.store.accounts import ApiKey, KeyLimits
from muxproxy.store.tx import IdempotencyRow
from muxproxy.surfaces import SurfaceName

# A job's columns that hold JSON.
JSON_COLUMNS = frozenset({"params", "client_params", "upstream_state", "result"})
# A new row's columns that the insert leaves to their defaults.
NEW_JOB_DEFAULTS: dict[str, Any] = {
    "upstream_id": None, "upstream_state": None, "result": None, "fail_code": None,
    "fail_msg": None, "attempts": 0, "recoveries": 0, "polls": 0, "started_at": None,
    "completed_at": None}


def decoded(value: str | bytes | Mapping[str, Any] | None) -> Any:
    """A JSON column as Python values, whether the driver decoded it or not."""
    if isinstance(value, str | bytes):
        return orjson.loads(value)
    return value


@functools.lru_cache(maxsize=4096)
def _request(params: str) -> GenerationRequest:
    """A job's request from its stored JSON, which never changes once written: the
    same job is read back on every claim, transition and poll."""
    return GenerationRequest.from_json(orjson.loads(params))


@functools.lru_cache(maxsize=4096)
def _result(result: str) -> JobResult:
    """Likewise a finished job's result, read back on every poll."""
    return JobResult.from_json(orjson.loads(result))


def _request_of(params: Any) -> GenerationRequest:
    return _request(params) if isinstance(params, str) else \
        GenerationRequest.from_json(decoded(params))


def _result_of(result: Any) -> JobResult | None:
    if not result:
        return None
    return _result(result) if isinstance(result, str) else JobResult.from_json(decoded(result))


def job_from_row(row: RowLike) -> Job:
    if isinstance(row, sqlite3.Row):
        # Its lookup by name compares the names one by one: one pass over it instead.
        row = dict(zip(row.keys(), row, strict=True))
    return built(Job, {
        "id": row["id"],
        "key_id": row["key_id"],
        "surface": SurfaceName(row["surface"]),
        "model": row["model"],
        "state": JobState(row["state"]),
        "request": _request_of(row["params"]),
        "client_params": decoded(row["client_params"]),
        "route_index": row["route_index"],
        "provider": row["provider"],
        "upstream_model": row["upstream_model"],
        "upstream_id": row["upstream_id"],
        "upstream_state": decoded(row["upstream_state"]) or {},
        "result": _result_of(row["result"]),
        "fail_code": row["fail_code"],
        "fail_msg": row["fail_msg"],
        "attempts": row["attempts"],
        "recoveries": row["recoveries"],
        "polls": row["polls"],
        "callback_url": row["callback_url"],
        "credits": row["credits"],
        "billing": row["billing"],
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "completed_at": row["completed_at"],
        "updated_at": row["updated_at"],
        "run_after": row["run_after"],
        "deadline_at": row["deadline_at"],
        "lease_owner": row["lease_owner"],
        "lease_until": row["lease_until"],
    })


def key_from_row(row: RowLike) -> ApiKey:
    models, networks = row["allowed_models"], row["webhook_allow_networks"]
    return ApiKey(id=row["id"], name=row["name"], created_at=row["created_at"],
                  revoked_at=row["revoked_at"], balance=row["balance"],
                  limits=KeyLimits(unlimited=bool(row["unlimited"]), rpm_limit=row["rpm_limit"],
                                   max_concurrent=row["max_concurrent"],
                                   allowed_models=tuple(json.loads(models)) if models else None,
                                   webhook_allow_networks=tuple(json.loads(networks))
                                   if networks else ()))


def idempotency_from_row(row: RowLike) -> IdempotencyRow:
    return IdempotencyRow(request_hash=row["request_hash"], job_id=row["job_id"],
                          owner=row["owner"], created_at=row["created_at"],
                          job_exists=bool(row["job_exists"]))
