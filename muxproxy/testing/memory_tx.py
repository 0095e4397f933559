"""The memory store's tables and its :class:`~muxproxy.store.tx.Tx`: rows in plain
dictionaries, JSON columns held decoded (as a driver reading ``jsonb`` hands them
back), and the checks SQLite's schema makes (the state machine, unique rows)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson

from muxproxy.pipeline.jobs import (
    TERMINAL,
    TRANSITIONS,
    IdempotencyClaim,
    IllegalTransition,
    Job,
    JobState,
)
from muxproxy.store.accounts import (
    ApiKey,
    KeyExists,
    KeyLimits,
    LedgerEntry,
    LedgerKind,
)
from muxproxy.store.rows import JSON_COLUMNS, NEW_JOB_DEFAULTS, job_from_row
from muxproxy.store.tx import IdempotencyRow, Tx
from muxproxy.webhooks.outbox import (
    Attempt,
    Delivery,
    DeliveryStatus,
    SigningSecret,
    new_delivery_id,
    target_host,
)

T = TypeVar("T")
_ACTIVE = frozenset({JobState.PENDING.value, JobState.PROCESSING.value})


class DuplicateRow(Exception):
    """A unique constraint refused a row (a job id, one ledger row of a kind per job)."""


def _jsonb(value: Any) -> Any:
    """A JSON column as a driver that decodes ``jsonb`` hands it back: a fresh copy."""
    return None if value is None else orjson.loads(orjson.dumps(value))


@dataclass
class Tables:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, ApiKey] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    idempotency: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    attempts: dict[str, list[Attempt]] = field(default_factory=dict)
    secrets: dict[str, SigningSecret] = field(default_factory=dict)

    def copy(self) -> Tables:
        """Rows are replaced, never changed in place, so copying the containers keeps
        a state a failed transaction can go back to."""
        return Tables(dict(self.jobs), dict(self.keys), dict(self.hashes), list(self.ledger),
                       dict(self.idempotency), dict(self.deliveries),
                       {k: list(v) for k, v in self.attempts.items()}, dict(self.secrets))


def active(row: Mapping[str, Any]) -> bool:
    return row["state"] in _ACTIVE


def taken_over(row: Mapping[str, Any]) -> bool:
    """A lapsed lease a claim may take from another owner (store/sql.py, TAKEN_OVER)."""
    return row["state"] == JobState.PENDING.value or row["upstream_id"] is not None


class MemoryTx(Tx):
    def __init__(self, tables: Tables) -> None:
        self.t = tables

    async def insert_job(self, row: Mapping[str, Any]) -> Job:
        if row["id"] in self.t.jobs:
            raise DuplicateRow(f"duplicate job id {row['id']}")
        stored = NEW_JOB_DEFAULTS | {k: (_jsonb(v) if k in JSON_COLUMNS else v)
                                     for k, v in row.items()} | {"swept": 0}
        self.t.jobs[row["id"]] = stored
        return job_from_row(stored)

    async def update_job(self, job_id: str, expected: JobState | None, owner: str | None,
                         values: Mapping[str, Any], *, after: Job | None = None) -> Job | None:
        row = self.t.jobs.get(job_id)
        if row is None or (expected is not None and row["state"] != expected) \
                or (owner is not None and row["lease_owner"] != owner):
            return None
        new = row | {k: (_jsonb(v) if k in JSON_COLUMNS else v) for k, v in values.items()}
        _check_move(job_id, row, new)
        self.t.jobs[job_id] = new
        return job_from_row(new)

    async def active_jobs(self, key_id: str) -> int:
        return sum(1 for r in self.t.jobs.values() if r["key_id"] == key_id and active(r))

    async def fail_overdue(self, now: int, limit: int, values: Mapping[str, Any]) -> list[Job]:
        due = [r["id"] for r in self.t.jobs.values() if active(r) and r["deadline_at"] <= now
               and (r["lease_owner"] is None or r["lease_until"] < now)][:limit]
        return [job for job_id in due
                if (job := await self.update_job(job_id, None, None, values)) is not None]

    async def orphaned(self, owner: str, now: int) -> list[Job]:
        return [job_from_row(r) for r in self.t.jobs.values()
                if active(r) and r["lease_owner"] not in (None, owner)
                and r["lease_until"] <= now]

    async def set_billing(self, job_id: str, expected: str, target: str) -> bool:
        row = self.t.jobs.get(job_id)
        if row is None or row["billing"] != expected:
            return False
        self.t.jobs[job_id] = row | {"billing": target}
        return True

    async def funds(self, key_id: str) -> tuple[int, bool] | None:
        key = self.t.keys.get(key_id)
        return None if key is None else (key.balance, key.limits.unlimited)

    async def key(self, key_id: str) -> ApiKey | None:
        return self.t.keys.get(key_id)

    async def key_named(self, name: str) -> ApiKey | None:
        return next((k for k in self.t.keys.values() if k.name == name), None)

    async def insert_key(self, key_id: str, name: str, key_hash: str, now: int,
                         limits: KeyLimits) -> None:
        if any(k.name == name for k in self.t.keys.values()) or key_id in self.t.keys:
            raise KeyExists(name)
        self.t.keys[key_id] = ApiKey(id=key_id, name=name, created_at=now, limits=limits)
        self.t.hashes[key_id] = key_hash

    async def set_key(self, key_id: str, limits: KeyLimits,
                      key_hash: str | None = None) -> ApiKey | None:
        key = self.t.keys.get(key_id)
        if key is None:
            return None
        self.t.keys[key.id] = replace(key, limits=limits)
        if key_hash is not None:
            self.t.hashes[key.id] = key_hash
        return self.t.keys[key.id]

    async def add_ledger(self, key_id: str, kind: LedgerKind, amount: int, now: int, *,
                         job_id: str | None = None, model: str | None = None,
                         note: str | None = None) -> None:
        if job_id is not None and any(e.job_id == job_id and e.kind is kind
                                      for e in self.t.ledger):
            raise DuplicateRow(f"a {kind} row for job {job_id} exists (unique)")
        self.t.ledger.append(LedgerEntry(id=len(self.t.ledger) + 1, key_id=key_id, kind=kind,
                                         amount=amount, job_id=job_id, model=model,
                                         note=note, created_at=now))
        key = self.t.keys.get(key_id)
        if key is not None:
            self.t.keys[key_id] = replace(key, balance=key.balance + amount)

    async def purge_idempotency(self, key_id: str, idem_key: str, now: int) -> None:
        expired = [k for k, r in self.t.idempotency.items() if r["expires_at"] <= now]
        own = [k for k in expired if k == (key_id, idem_key)]
        for k in own + [k for k in expired if k not in own][:100]:
            del self.t.idempotency[k]

    async def idempotency(self, key_id: str, idem_key: str) -> IdempotencyRow | None:
        row = self.t.idempotency.get((key_id, idem_key))
        if row is None:
            return None
        return IdempotencyRow(request_hash=row["request_hash"], job_id=row["job_id"],
                              owner=row["owner"], created_at=row["created_at"],
                              job_exists=row["job_id"] in self.t.jobs)

    async def put_idempotency(self, claim: IdempotencyClaim, request_hash: str, owner: str,
                              now: int, expires_at: int) -> None:
        self.t.idempotency[(claim.key_id, claim.idem_key)] = {
            "request_hash": request_hash, "job_id": None, "claim": claim.token,
            "owner": owner, "created_at": now, "expires_at": expires_at}

    async def bind_idempotency(self, claim: IdempotencyClaim, job_id: str) -> bool:
        where = (claim.key_id, claim.idem_key)
        row = self.t.idempotency.get(where)
        if row is None or row["claim"] != claim.token or row["job_id"] is not None:
            return False
        self.t.idempotency[where] = row | {"job_id": job_id, "claim": None}
        return True

    async def drop_idempotency(self, claim: IdempotencyClaim) -> None:
        where = (claim.key_id, claim.idem_key)
        row = self.t.idempotency.get(where)
        if row is not None and row["claim"] == claim.token and row["job_id"] is None:
            del self.t.idempotency[where]

    async def insert_deliveries(self, jobs: Sequence[Job], now: int) -> None:
        for job in jobs:
            if job.callback_url is not None and job.id not in self.t.deliveries:
                self.t.deliveries[job.id] = new_delivery(job, job.callback_url, now)


def _check_move(job_id: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """What SQLite's triggers refuse: a move the state machine does not allow, and a
    change to an ended job's result or failure."""
    before, after = JobState(old["state"]), JobState(new["state"])
    if before is not after and after not in TRANSITIONS[before]:
        raise IllegalTransition(job_id, before, after)
    if before in TERMINAL and (new["result"] != old["result"]
                               or new["fail_msg"] != old["fail_msg"]):
        raise IllegalTransition(job_id, before, after)


def new_delivery(job: Job, url: str, now: int) -> Delivery:
    return Delivery(id=new_delivery_id(), job_id=job.id, key_id=job.key_id, url=url,
                    host=target_host(url), status=DeliveryStatus.PENDING, attempts=0,
                    round_attempts=0, created_at=now, updated_at=now, next_attempt_at=now,
                    window_ends_at=None, delivered_at=None, last_error=None)
