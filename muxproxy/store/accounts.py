"""The accounts half of the store: API keys, their credit ledger, usage and
idempotency records.

Billing follows the job: a priced job *holds* its price at submit, is *charged*
when a worker starts it (the hold released and a charge written, in the same
transaction as the state change), and is *refunded* (after a charge) or
*released* (before one) when it fails. The ledger is append-only; a key's balance
always equals the sum of its rows, and each kind of row exists at most once per
job, which the database itself enforces.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import StrEnum

from muxproxy.jobs import IdempotencyClaim


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


class AccountStore(abc.ABC):
    @abc.abstractmethod
    async def upsert_key(self, name: str, key_hash: str, *, now: int,
                         limits: KeyLimits = NO_LIMITS, initial_credits: int = 0) -> ApiKey:
        """A key from the config file: created once (with its initial credits as a
        top-up), later only its hash and limits follow the file."""

    @abc.abstractmethod
    async def create_key(self, name: str, key_hash: str, *, now: int,
                         limits: KeyLimits = NO_LIMITS, credits: int = 0) -> ApiKey:
        """A new key; :class:`KeyExists` if the name is taken."""

    @abc.abstractmethod
    async def key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKey | None:
        """By id or by name."""

    @abc.abstractmethod
    async def list_keys(self) -> list[ApiKey]: ...

    @abc.abstractmethod
    async def update_key(self, key_id: str, limits: KeyLimits) -> ApiKey: ...

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, *, now: int) -> ApiKey: ...

    @abc.abstractmethod
    async def topup(self, key_id: str, amount: int, *, now: int,
                    note: str | None = None) -> ApiKey:
        """Add (or, negative, remove) credits, as a ``topup`` (or ``deduct``) ledger row."""

    @abc.abstractmethod
    async def ledger(self, key_id: str, *, limit: int = 100,
                     before: int | None = None) -> list[LedgerEntry]:
        """Newest first."""

    @abc.abstractmethod
    async def ledger_sum(self, key_id: str) -> int: ...

    @abc.abstractmethod
    async def usage(self, key_id: str, *, since: int) -> list[UsageRow]:
        """Jobs and credits per model per UTC day since ``since`` (ms)."""

    @abc.abstractmethod
    async def idempotency_begin(self, key_id: str, idem_key: str, request_hash: str, *,
                                now: int, ttl_ms: int, owner: str,
                                create_step_ms: int) -> IdempotencyClaim | IdempotencyRecord:
        """Reserve ``idem_key`` for a request about to create a job (a claim, bound to
        the job by :meth:`Store.create_job`), or the record already there.

        A reservation without a job is taken over (a new claim) when its create step
        is over: made by another ``owner`` (a process that is gone: one process
        serves a database), or ``create_step_ms`` ago or more. A record whose job no
        longer exists is taken over too."""

    @abc.abstractmethod
    async def idempotency_release(self, claim: IdempotencyClaim) -> None:
        """Drop a reservation that no job was bound to (the request failed before
        creating one); nothing happens once a job is bound or the key taken over."""
