"""Key administration: create, list, show, top up, deduct, set limits, revoke,
ledger and usage. The admin API and the ``muxproxy keys`` CLI both go through
:class:`KeyAdmin`, so the same input meets the same rules (:mod:`muxproxy.keys`)
and the same error everywhere.

Keys are addressed by id. Finding one by name is a separate, explicit call
(:meth:`KeyAdmin.named`); names may not take the id's form, so neither can be
mistaken for the other. (Older databases may hold such a name; the store finds keys
by id alone, so that key is never touched through the id it looks like.)
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from muxproxy import keys
from muxproxy.auth import hash_key
from muxproxy.clock import Clock, now_ms
from muxproxy.errors import Conflict, InvalidRequest, NotFound
from muxproxy.store import ApiKey, KeyExists, KeyLimits, KeyNotFound, Store
from muxproxy.store.accounts import LedgerEntry, UsageRow

KEY_PREFIX = "mux_"
DAY_MS = 86_400_000
CREATE_FIELDS = frozenset({"name", "credits"}) | keys.LIMIT_NAMES
CREDIT_FIELDS = frozenset({"amount", "note"})


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_view(key: ApiKey) -> dict[str, Any]:
    view: dict[str, Any] = {"id": key.id, "name": key.name, "created_at": key.created_at,
                            "revoked_at": key.revoked_at, "balance": key.balance}
    for field in keys.LIMIT_FIELDS:
        value = getattr(key.limits, field.attr)
        view[field.name] = list(value) if isinstance(value, tuple) else value
    return view


def ledger_view(entry: LedgerEntry) -> dict[str, Any]:
    return {"id": entry.id, "kind": entry.kind.value, "amount": entry.amount,
            "job_id": entry.job_id, "model": entry.model, "note": entry.note,
            "created_at": entry.created_at}


def usage_view(row: UsageRow) -> dict[str, Any]:
    return {"day": row.day, "model": row.model, "jobs": row.jobs, "completed": row.completed,
            "failed": row.failed, "credits": row.credits}


def apply_limits(limits: KeyLimits, changes: Mapping[str, Any]) -> KeyLimits:
    """``limits`` with the limit fields found in ``changes``; null clears a limit."""
    values = {f.attr: f.check(changes[f.name], f.name)
              for f in keys.LIMIT_FIELDS if f.name in changes}
    return replace(limits, **values)


def _no_unknown(fields: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = set(fields) - known
    if unknown:
        raise InvalidRequest(f"unknown field: {', '.join(sorted(unknown))}")


def _not_found(ref: str, hint: str = "") -> NotFound:
    return NotFound(f"no such key: there is no key {ref!r}{hint}")


class KeyAdmin:
    """Key administration on ``store``; ``changed`` runs after any change that a
    cache of keys must not miss (the gateway's auth cache)."""

    def __init__(self, store: Store, clock: Clock,
                 changed: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.clock = clock
        self.changed = changed

    async def create(self, fields: Mapping[str, Any]) -> tuple[ApiKey, str]:
        """A new key and its secret, which is shown once: only its hash is kept."""
        _no_unknown(fields, CREATE_FIELDS)
        name = keys.check_name(fields.get("name"))
        credits = keys.check_credits(fields.get("credits", 0))
        limits = apply_limits(KeyLimits(), fields)
        secret = new_secret()
        try:
            key = await self.store.create_key(name, hash_key(secret), now=now_ms(self.clock),
                                              limits=limits, credits=credits)
        except KeyExists:
            raise Conflict(f"a key named {name!r} exists") from None
        return key, secret

    async def list_keys(self, name: str | None = None) -> list[ApiKey]:
        """Every key, revoked ones too; with ``name``, the one so named (if any)."""
        if name is not None:
            if len(name) > keys.MAX_NAME_CHARS:
                raise InvalidRequest(f"'name' must be at most {keys.MAX_NAME_CHARS} characters",
                                     param="name")
            found = await self.named(name)
            return [found] if found is not None else []
        return await self.store.list_keys()

    async def named(self, name: str) -> ApiKey | None:
        return await self.store.key_named(name)

    async def by_id(self, key_id: str) -> ApiKey:
        key = await self.store.get_key(key_id)
        if key is None:
            hint = "" if keys.is_key_id(key_id) else \
                " (keys are addressed by id; look one up by name with GET /admin/keys?name=...)"
            raise _not_found(key_id, hint)
        return key

    async def find(self, ref: str) -> ApiKey:
        """For the CLI: an id when ``ref`` has the id's form, else a name."""
        if keys.is_key_id(ref):
            return await self.by_id(ref)
        key = await self.named(ref)
        if key is None:
            raise _not_found(ref)
        return key

    async def topup(self, key: ApiKey, fields: Mapping[str, Any]) -> ApiKey:
        """Add ``amount`` credits, as a ``topup`` ledger row."""
        return await self._credit(key, fields, 1)

    async def deduct(self, key: ApiKey, fields: Mapping[str, Any]) -> ApiKey:
        """Take ``amount`` credits back, as a ``deduct`` ledger row; the balance may
        go below zero (the key is then refused until topped up)."""
        return await self._credit(key, fields, -1)

    async def _credit(self, key: ApiKey, fields: Mapping[str, Any], sign: int) -> ApiKey:
        _no_unknown(fields, CREDIT_FIELDS)
        change = sign * keys.check_amount(fields.get("amount"))
        note = keys.check_note(fields.get("note"))
        keys.check_balance(key.balance, change)
        try:
            updated = await self.store.topup(key.id, change, now=now_ms(self.clock), note=note)
        except KeyNotFound:
            raise _not_found(key.id) from None
        self.changed()
        return updated

    async def set_limits(self, key: ApiKey, changes: Mapping[str, Any]) -> ApiKey:
        _no_unknown(changes, keys.LIMIT_NAMES)
        updated = await self.store.update_key(key.id, apply_limits(key.limits, changes))
        self.changed()
        return updated

    async def revoke(self, key: ApiKey) -> ApiKey:
        revoked = await self.store.revoke_key(key.id, now=now_ms(self.clock))
        self.changed()  # its very next request gets 401
        return revoked

    async def ledger(self, key: ApiKey, *, limit: Any = 100,
                     before: Any = None) -> dict[str, Any]:
        """Entries newest first, and their sum (which is the balance)."""
        limit = keys.whole(limit, "limit", 1, 1000)
        if before is not None:
            before = keys.whole(before, "before", 0, 2**62) or None  # 0: from the newest
        entries = await self.store.ledger(key.id, limit=limit, before=before)
        return {"key": key_view(key), "entries": [ledger_view(e) for e in entries],
                "ledger_sum": await self.store.ledger_sum(key.id)}

    async def usage(self, key: ApiKey, *, days: Any = 30) -> dict[str, Any]:
        """Jobs and credits per model per UTC day, for the last ``days`` days."""
        days = keys.whole(days, "days", 1, 3660)
        rows = await self.store.usage(key.id, since=now_ms(self.clock) - days * DAY_MS)
        return {"key": key_view(key), "days": days, "usage": [usage_view(r) for r in rows]}
