"""Outbox records: one delivery per task with a ``callback_url``, and its attempts.

The store writes the delivery in the same transaction that makes the task
terminal, so a crash at any point loses no callback. The delivery id is the
``webhook-id`` header of every attempt, so receivers can de-duplicate.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from muxproxy.pipeline.jobs import RowLike


class DeliveryStatus(StrEnum):
    # Waiting for its next attempt (or an attempt is in flight).
    PENDING = "pending"
    # A 2xx came back.
    DELIVERED = "delivered"
    # Given up: the retry window passed, or the receiver answered 410 Gone.
    # A redeliver request arms it again.
    FAILED = "failed"


def new_delivery_id() -> str:
    return f"msg_{secrets.token_urlsafe(18)}"


def target_host(url: str) -> str:
    """``host:port`` of a callback URL: the unit of per-receiver concurrency, and
    what logs show of it (paths and queries may carry the receiver's tokens)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Delivery:
    id: str
    job_id: str
    key_id: str
    url: str
    host: str
    status: DeliveryStatus
    # All attempts ever made, and those since the delivery was last (re)armed.
    attempts: int
    round_attempts: int
    created_at: int
    updated_at: int
    next_attempt_at: int | None
    # Set by the first attempt of a round: no retry is scheduled past it.
    window_ends_at: int | None
    delivered_at: int | None
    last_error: str | None
    lease_owner: str | None = None
    lease_until: int | None = None

    @classmethod
    def from_row(cls, row: RowLike) -> Delivery:
        return cls(
            id=row["id"], job_id=row["job_id"], key_id=row["key_id"], url=row["url"],
            host=row["host"], status=DeliveryStatus(row["status"]), attempts=row["attempts"],
            round_attempts=row["round_attempts"], created_at=row["created_at"],
            updated_at=row["updated_at"], next_attempt_at=row["next_attempt_at"],
            window_ends_at=row["window_ends_at"], delivered_at=row["delivered_at"],
            last_error=row["last_error"], lease_owner=row["lease_owner"],
            lease_until=row["lease_until"])


@dataclass(frozen=True)
class Attempt:
    """One POST to the receiver. ``status_code`` is None when no response came
    (refused, unreachable, timed out); ``response`` holds its first bytes."""

    started_at: int
    latency_ms: int
    status_code: int | None = None
    error: str | None = None
    response: str | None = None
    number: int = 0

    @classmethod
    def from_row(cls, row: RowLike) -> Attempt:
        return cls(number=row["number"], started_at=row["started_at"],
                   latency_ms=row["latency_ms"], status_code=row["status_code"],
                   error=row["error"], response=row["response"])


@dataclass(frozen=True)
class Verdict:
    """What an attempt means for its delivery, handed to the store with it."""

    status: DeliveryStatus
    next_attempt_at: int | None
    window_ends_at: int
    reason: str | None = None


class DeliveryPending(Exception):
    """A redelivery was asked for while the delivery is still pending: one at a time."""

    def __init__(self, delivery: Delivery) -> None:
        super().__init__(f"delivery {delivery.id} is still pending")
        self.delivery = delivery


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest_created_at: int | None


@dataclass(frozen=True)
class SigningSecret:
    key_id: str
    secret: str
    created_at: int
