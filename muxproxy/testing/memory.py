"""A store kept in memory, for unit tests that need no database file.

Every rule comes from :class:`~muxproxy.store.Store`; this backend only provides
its primitives, over the tables of :mod:`muxproxy.testing.memory_tx`. It passes the
same contract suites as SQLite. One process, one event loop: a transaction runs
to its end without yielding, and is undone if its rule raises."""

from __future__ import annotations

import collections
import datetime
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from muxproxy.pipeline.jobs import TERMINAL, Job, JobState
from muxproxy.ratelimit import RateLimiter
from muxproxy.store.accounts import ApiKey, KeyNotFound, LedgerEntry, UsageRow
from muxproxy.store.base import Store
from muxproxy.store.jobs import JobQuery
from muxproxy.store.rows import job_from_row
from muxproxy.store.tx import Tx, run_inline
from muxproxy.testing.memory_tx import MemoryTx, Tables, active, new_delivery
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
_ENDED = frozenset(state.value for state in TERMINAL)


class MemoryStore(Store):
    def __init__(self) -> None:
        self.t = Tables()
        self.probed_at: int | None = None
        self.rates = RateLimiter()

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def probe_write(self, now: int) -> None:
        self.probed_at = now

    async def _transaction(self, rule: Callable[[Tx], Coroutine[Any, Any, T]]) -> T:
        before = self.t.copy()
        try:
            return run_inline(rule(MemoryTx(self.t)))
        except BaseException:
            self.t = before
            raise

    def _jobs(self, keep: Callable[[Mapping[str, Any]], bool]) -> list[Mapping[str, Any]]:
        return [row for row in self.t.jobs.values() if keep(row)]

    # -- jobs ---------------------------------------------------------------

    async def get_job(self, job_id: str, key_id: str | None = None) -> Job | None:
        row = self.t.jobs.get(job_id)
        if row is None or (key_id is not None and row["key_id"] != key_id):
            return None
        return job_from_row(row)

    async def list_jobs(self, key_id: str, *, limit: int = 50, before: int | None = None,
                        before_id: str | None = None) -> list[Job]:
        def listed(r: Mapping[str, Any]) -> bool:
            if r["key_id"] != key_id:
                return False
            if before is None:
                return True
            return bool(r["created_at"] < before or (
                before_id is not None and r["created_at"] == before and r["id"] < before_id))

        rows = self._jobs(listed)
        rows.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        return [job_from_row(r) for r in rows[:limit]]

    async def find_jobs(self, query: JobQuery) -> list[Job]:
        wanted = {"key_id": query.key_id, "state": query.state, "model": query.model,
                  "provider": query.provider}
        rows = self._jobs(lambda r: all(v is None or r[k] == v for k, v in wanted.items())
                          and (query.since is None or r["created_at"] >= query.since)
                          and (query.before is None or r["created_at"] < query.before
                               or (query.before_id is not None
                                   and r["created_at"] == query.before
                                   and r["id"] < query.before_id)))
        rows.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        return [job_from_row(r) for r in rows[:query.limit]]

    async def scan_jobs(self, *, after: str | None = None, limit: int = 500) -> list[Job]:
        rows = sorted(self._jobs(lambda r: r["id"] > (after or "")), key=lambda r: r["id"])
        return [job_from_row(r) for r in rows[:limit]]

    async def claim_due_many(self, wanted: Mapping[str, tuple[int, int]], now: int,
                             owner: str) -> dict[str, list[Job]]:
        claimed = {}
        for provider, (limit, lease_until) in wanted.items():
            due = sorted(self._jobs(lambda r, p=provider: r["provider"] == p  # type: ignore[misc]
                                    and active(r) and r["run_after"] <= now
                                    and (r["lease_owner"] is None or r["lease_until"] <= now)),
                         key=lambda r: r["run_after"])[:max(limit, 0)]
            for row in due:
                self.t.jobs[row["id"]] = dict(row, lease_owner=owner, lease_until=lease_until)
            if due:
                claimed[provider] = [job_from_row(self.t.jobs[r["id"]]) for r in due]
        return claimed

    async def next_due(self, providers: Sequence[str]) -> int | None:
        times = [r["run_after"] if r["lease_owner"] is None
                 else max(r["run_after"], r["lease_until"])
                 for r in self._jobs(lambda r: active(r) and r["provider"] in providers)]
        return min(times, default=None)

    async def renew_leases(self, job_ids: Sequence[str], owner: str, until: int) -> None:
        for job_id in job_ids:
            row = self.t.jobs.get(job_id)
            if row is not None and row["lease_owner"] == owner:
                self.t.jobs[job_id] = dict(row, lease_until=until)

    async def ended_unswept(self, limit: int, after: tuple[int, str] | None = None
                            ) -> list[Job]:
        return self._by_end(self._jobs(lambda r: r["state"] in _ENDED and r["swept"] == 0),
                            limit, after)

    async def expired_unswept(self, ended_before: int, limit: int,
                              after: tuple[int, str] | None = None) -> list[Job]:
        return self._by_end(self._jobs(lambda r: r["state"] in _ENDED and r["swept"] < 2
                                       and r["completed_at"] <= ended_before), limit, after)

    @staticmethod
    def _by_end(rows: Iterable[Mapping[str, Any]], limit: int,
                after: tuple[int, str] | None) -> list[Job]:
        def end(row: Mapping[str, Any]) -> tuple[int, str]:
            return row["completed_at"], row["id"]

        page = [r for r in sorted(rows, key=end) if after is None or end(r) > after]
        return [job_from_row(r) for r in page[:limit]]

    async def mark_swept(self, job_ids: Sequence[str], level: int) -> None:
        for job_id in job_ids:
            row = self.t.jobs.get(job_id)
            if row is not None and row["swept"] < level:
                self.t.jobs[job_id] = dict(row, swept=level)

    async def count_jobs(self) -> Mapping[tuple[str, str, str], int]:
        return collections.Counter((r["model"], r["provider"], r["state"])
                                   for r in self.t.jobs.values())

    # -- accounts -----------------------------------------------------------

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        return next((self.t.keys[key_id] for key_id, digest in self.t.hashes.items()
                     if digest == key_hash), None)

    async def get_key(self, key_id: str) -> ApiKey | None:
        return await MemoryTx(self.t).key(key_id)

    async def key_named(self, name: str) -> ApiKey | None:
        return await MemoryTx(self.t).key_named(name)

    async def list_keys(self) -> list[ApiKey]:
        return sorted(self.t.keys.values(), key=lambda k: (k.created_at, k.name))

    async def revoke_key(self, key_id: str, *, now: int) -> ApiKey:
        key = await self.get_key(key_id)
        if key is None:
            raise KeyNotFound(key_id)
        self.t.keys[key.id] = replace(key, revoked_at=key.revoked_at or now)
        return self.t.keys[key.id]

    async def take_request(self, key_id: str, rpm: int, now: int) -> float | None:
        return self.rates.acquire(key_id, rpm, now)

    async def ledger(self, key_id: str, *, limit: int = 100,
                     before: int | None = None) -> list[LedgerEntry]:
        rows = [e for e in reversed(self.t.ledger)
                if e.key_id == key_id and (before is None or e.id < before)]
        return rows[:limit]

    async def ledger_sum(self, key_id: str) -> int:
        return sum(e.amount for e in self.t.ledger if e.key_id == key_id)

    async def usage(self, key_id: str | None, *, since: int) -> list[UsageRow]:
        days: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
        for r in self._jobs(lambda r: key_id in (None, r["key_id"])
                            and r["created_at"] >= since):
            day = datetime.datetime.fromtimestamp(r["created_at"] // 1000, datetime.UTC)
            counts = days[(day.date().isoformat(), r["model"])]
            counts[0] += 1
            counts[1] += r["state"] == JobState.COMPLETED
            counts[2] += r["state"] == JobState.FAILED
            counts[3] += r["credits"] if r["billing"] == "charged" else 0
        return [UsageRow(day=day, model=model, jobs=c[0], completed=c[1], failed=c[2],
                         credits=c[3]) for (day, model), c in sorted(days.items())]

    # -- webhook outbox ----------------------------------------------------------

    async def get_delivery(self, job_id: str, key_id: str | None = None) -> Delivery | None:
        found = self.t.deliveries.get(job_id)
        return None if found is None or key_id not in (None, found.key_id) else found

    async def scan_deliveries(self, *, after: str | None = None,
                              limit: int = 500) -> list[Delivery]:
        found = sorted((d for d in self.t.deliveries.values() if d.job_id > (after or "")),
                       key=lambda d: d.job_id)
        return found[:limit]

    async def list_attempts(self, delivery_id: str) -> list[Attempt]:
        return list(self.t.attempts.get(delivery_id, []))

    def _due(self, now: int | None, skip_hosts: Sequence[str],
             skip_keys: Sequence[str]) -> list[Delivery]:
        return sorted((d for d in self.t.deliveries.values()
                       if d.status is DeliveryStatus.PENDING and d.host not in skip_hosts
                       and d.key_id not in skip_keys
                       and d.next_attempt_at is not None
                       and (d.lease_owner is None if now is None else
                            d.next_attempt_at <= now
                            and (d.lease_owner is None or (d.lease_until or 0) < now))),
                      key=lambda d: d.next_attempt_at or 0)

    async def claim_deliveries(self, now: int, limit: int, owner: str, lease_until: int,
                               skip_hosts: Sequence[str] = (),
                               skip_keys: Sequence[str] = ()) -> list[Delivery]:
        claimed = []
        for found in self._due(now, skip_hosts, skip_keys)[:max(limit, 0)]:
            claimed.append(replace(found, lease_owner=owner, lease_until=lease_until))
            self.t.deliveries[found.job_id] = claimed[-1]
        return claimed

    def _leased(self, delivery_id: str, owner: str | None) -> Delivery | None:
        return next((d for d in self.t.deliveries.values() if d.id == delivery_id
                     and (owner is None or d.lease_owner == owner)), None)

    async def record_attempt(self, delivery_id: str, owner: str, attempt: Attempt,
                             verdict: Verdict, *, now: int,
                             keep: int | None = None) -> Delivery | None:
        held = self._leased(delivery_id, owner)
        if held is None:
            return None
        number = held.attempts + 1
        kept = [*self.t.attempts.get(delivery_id, []), replace(attempt, number=number)]
        self.t.attempts[delivery_id] = kept if keep is None else \
            [a for a in kept if a.number > number - keep]
        delivered = now if verdict.status is DeliveryStatus.DELIVERED else held.delivered_at
        after = replace(held, attempts=number, round_attempts=held.round_attempts + 1,
                        status=verdict.status, next_attempt_at=verdict.next_attempt_at,
                        window_ends_at=verdict.window_ends_at, delivered_at=delivered,
                        last_error=verdict.reason, updated_at=now, lease_owner=None,
                        lease_until=None)
        self.t.deliveries[held.job_id] = after
        return after

    async def release_delivery(self, delivery_id: str, owner: str) -> None:
        held = self._leased(delivery_id, owner)
        if held is not None:
            self.t.deliveries[held.job_id] = replace(held, lease_owner=None, lease_until=None)

    async def recover_deliveries(self, owner: str) -> int:
        stale = [d for d in self.t.deliveries.values() if d.lease_owner not in (None, owner)]
        for found in stale:
            self.t.deliveries[found.job_id] = replace(found, lease_owner=None, lease_until=None)
        return len(stale)

    async def redeliver(self, job: Job, *, now: int) -> Delivery:
        if job.callback_url is None or not job.is_terminal:
            raise ValueError(f"job {job.id} has no callback to deliver")
        found = self.t.deliveries.get(job.id)
        if found is not None and found.status is DeliveryStatus.PENDING:
            raise DeliveryPending(found)
        armed = new_delivery(job, job.callback_url, now) if found is None else replace(
            found, status=DeliveryStatus.PENDING, round_attempts=0, next_attempt_at=now,
            window_ends_at=None, last_error=None, updated_at=now)
        self.t.deliveries[job.id] = armed
        return armed

    async def next_delivery_due(self, skip_hosts: Sequence[str] = (),
                                skip_keys: Sequence[str] = ()) -> int | None:
        due = self._due(None, skip_hosts, skip_keys)
        return due[0].next_attempt_at if due else None

    async def delivery_backlog(self) -> Backlog:
        pending = [d for d in self.t.deliveries.values()
                   if d.status is DeliveryStatus.PENDING]
        return Backlog(pending=len(pending),
                       oldest_created_at=min((d.created_at for d in pending), default=None))

    async def set_signing_secret(self, key_id: str, secret: str, *,
                                 now: int) -> SigningSecret:
        self.t.secrets[key_id] = SigningSecret(key_id=key_id, secret=secret, created_at=now)
        return self.t.secrets[key_id]

    async def signing_secret(self, key_id: str) -> SigningSecret | None:
        return self.t.secrets.get(key_id)

    async def delete_signing_secret(self, key_id: str) -> bool:
        return self.t.secrets.pop(key_id, None) is not None
