"""The accounts part of the store: API keys, their credit ledger and usage, and
the records and errors the other parts share with it.

The ledger is append-only; a key's balance always equals the sum of its rows, and
each kind of row exists at most once per job (the money rules are in
:mod:`muxproxy.store.billing`).
"""

from __future__ import annotations

import abc
import secrets
from dataclasses import dataclass
from enum import StrEnum

from muxproxy.keys import KEY_ID_PREFIX
from muxproxy.store.tx import Transactional, Tx


class Billing(StrEnum):
    NONE = "none"          # free model: no ledger rows
    HELD = "held"          # price reserved at submit
    CHARGED = "charged"    # the job ran: hold released, charge written
    REFUNDED = "refunded"  # failed after the charge: refund written
    RELEASED = "released"  # failed before running: hold released


class LedgerKind(StrEnum):
    TOPUP = "topup"
    DEDUCT = "deduct"  # credits an administrator took back
    HOLD = "hold"
    RELEASE = "release"
    CHARGE = "charge"
    REFUND = "refund"


@dataclass(frozen=True)
class KeyLimits:
    unlimited: bool = False
    rpm_limit: int | None = None
    max_concurrent: int | None = None
    allowed_models: tuple[str, ...] | None = None
    # Private networks (CIDR) this key's callbacks may reach; see webhooks.ssrf.
    webhook_allow_networks: tuple[str, ...] = ()


NO_LIMITS = KeyLimits()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: int
    revoked_at: int | None = None
    balance: int = 0
    limits: KeyLimits = NO_LIMITS

    def may_use(self, model: str) -> bool:
        allowed = self.limits.allowed_models
        return allowed is None or model in allowed


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    key_id: str
    kind: LedgerKind
    amount: int
    job_id: str | None
    model: str | None
    note: str | None
    created_at: int


@dataclass(frozen=True)
class UsageRow:
    day: str
    model: str
    jobs: int
    completed: int
    failed: int
    credits: int


@dataclass(frozen=True)
class IdempotencyRecord:
    """A key already in use: the job it is bound to, or None while the request
    that reserved it is still in its create step."""

    request_hash: str
    job_id: str | None


class IdempotencySuperseded(Exception):
    """The reservation a job was to be bound to was taken over by a retry."""


class InsufficientBalance(Exception):
    def __init__(self, balance: int, price: int) -> None:
        super().__init__(f"balance {balance} is less than the price {price}")
        self.balance = balance
        self.price = price


class ConcurrencyLimitReached(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} jobs already in flight")
        self.limit = limit


class KeyExists(Exception):
    pass


class KeyNotFound(Exception):
    pass


class AccountStore(Transactional):
    """API keys and their ledger. Creating keys and moving credits are rules over
    :class:`~muxproxy.store.tx.Tx`; the rest are a backend's reads."""

    async def upsert_key(self, name: str, key_hash: str, *, now: int,
                         limits: KeyLimits = NO_LIMITS, initial_credits: int = 0) -> ApiKey:
        """A key from the config file: created once (with its initial credits as a
        top-up), later only its hash and limits follow the file."""

        async def upsert(tx: Tx) -> ApiKey | None:
            existing = await tx.key_named(name)
            if existing is not None:
                return await tx.set_key(existing.id, limits, key_hash)
            key_id = new_key_id()
            await tx.insert_key(key_id, name, key_hash, now, limits)
            if initial_credits:
                await tx.add_ledger(key_id, LedgerKind.TOPUP, initial_credits, now,
                                    note="initial credits from config")
            return await tx.key(key_id)

        try:
            return _found(await self._transaction(upsert), name)
        except KeyExists:
            # Another replica starting with the same file inserted it first (or the hash
            # belongs to another key: then this raises KeyExists again).
            return _found(await self._transaction(upsert), name)

    async def create_key(self, name: str, key_hash: str, *, now: int,
                         limits: KeyLimits = NO_LIMITS, credits: int = 0) -> ApiKey:
        """A new key; :class:`KeyExists` if the name is taken."""
        key_id = new_key_id()

        async def create(tx: Tx) -> ApiKey | None:
            await tx.insert_key(key_id, name, key_hash, now, limits)
            if credits:
                await tx.add_ledger(key_id, LedgerKind.TOPUP, credits, now,
                                    note="initial credits")
            return await tx.key(key_id)

        return _found(await self._transaction(create), name)

    @abc.abstractmethod
    async def key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKey | None:
        """By id only: a legacy name may equal another key's id (see
        :meth:`key_named`)."""

    @abc.abstractmethod
    async def key_named(self, name: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def list_keys(self) -> list[ApiKey]: ...

    async def update_key(self, key_id: str, limits: KeyLimits) -> ApiKey:
        return _found(await self._transaction(lambda tx: tx.set_key(key_id, limits)), key_id)

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, *, now: int) -> ApiKey: ...

    @abc.abstractmethod
    async def take_request(self, key_id: str, rpm: int, now: int) -> float | None:
        """Count one request of the key against its ``rpm`` (a token bucket, see
        :mod:`muxproxy.ratelimit`) at ``now``: None when allowed, else seconds until
        one would be. Exact for every process using the store."""

    async def topup(self, key_id: str, amount: int, *, now: int,
                    note: str | None = None) -> ApiKey:
        """Add (or, negative, remove) credits, as a ``topup`` (or ``deduct``) ledger row."""

        async def add(tx: Tx) -> ApiKey | None:
            key = _found(await tx.key(key_id), key_id)
            kind = LedgerKind.TOPUP if amount > 0 else LedgerKind.DEDUCT
            await tx.add_ledger(key.id, kind, amount, now, note=note)
            return await tx.key(key.id)

        return _found(await self._transaction(add), key_id)

    @abc.abstractmethod
    async def ledger(self, key_id: str, *, limit: int = 100,
                     before: int | None = None) -> list[LedgerEntry]:
        """Newest first."""

    @abc.abstractmethod
    async def ledger_sum(self, key_id: str) -> int: ...

    @abc.abstractmethod
    async def usage(self, key_id: str | None, *, since: int) -> list[UsageRow]:
        """Jobs and credits per model per UTC day since ``since`` (ms): of one key, or
        with ``key_id`` None of every key together."""


def new_key_id() -> str:
    return f"{KEY_ID_PREFIX}{secrets.token_hex(8)}"


def _found(key: ApiKey | None, ref: str) -> ApiKey:
    if key is None:
        raise KeyNotFound(ref)
    return key
