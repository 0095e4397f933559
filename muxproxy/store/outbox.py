"""The webhook-outbox half of the store. A job's delivery is inserted by the rules
that end it (:func:`muxproxy.store.billing.moved`); the rest are a backend's
statements on its deliveries and their attempts."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from muxproxy.pipeline.jobs import Job
from muxproxy.webhooks.outbox import Attempt, Backlog, Delivery, SigningSecret, Verdict


class OutboxStore(abc.ABC):
    @abc.abstractmethod
    async def get_delivery(self, job_id: str, key_id: str | None = None) -> Delivery | None:
        """A job's callback delivery; with ``key_id``, None when another key owns it."""

    @abc.abstractmethod
    async def scan_deliveries(self, *, after: str | None = None,
                              limit: int = 500) -> list[Delivery]:
        """Every delivery, by job id, a page at a time (``after`` the last job id
        seen): for audits."""

    @abc.abstractmethod
    async def list_attempts(self, delivery_id: str) -> list[Attempt]:
        """A delivery's attempts, oldest first."""

    @abc.abstractmethod
    async def claim_deliveries(self, now: int, limit: int, owner: str, lease_until: int,
                               skip_hosts: Sequence[str] = (),
                               skip_keys: Sequence[str] = ()) -> list[Delivery]:
        """Atomically lease up to ``limit`` pending deliveries due by ``now`` (unleased,
        or with a lapsed lease), earliest first, leaving out ``skip_hosts`` and the
        deliveries of ``skip_keys``."""

    @abc.abstractmethod
    async def record_attempt(self, delivery_id: str, owner: str, attempt: Attempt,
                             verdict: Verdict, *, now: int,
                             keep: int | None = None) -> Delivery | None:
        """Append ``attempt`` (numbered next) and apply ``verdict``, releasing the lease,
        in one transaction; None, and nothing written, if ``owner`` lost the lease.
        With ``keep``, only the newest ``keep`` attempts stay (older ones are pruned
        in the same transaction)."""

    @abc.abstractmethod
    async def release_delivery(self, delivery_id: str, owner: str) -> None:
        """Drop a lease without recording an attempt (stopping, or over a host limit)."""

    @abc.abstractmethod
    async def recover_deliveries(self, owner: str, now: int) -> int:
        """Drop the leases other owners held that lapsed by ``now`` (their process
        died mid-attempt); return how many. Never a live lease of another replica."""

    @abc.abstractmethod
    async def redeliver(self, job: Job, *, now: int) -> Delivery:
        """Arm a terminal job's delivery again, due at ``now`` with a fresh retry window
        (created if the job has none), keeping its id and attempt history.
        :class:`DeliveryPending` while the delivery is still pending."""

    @abc.abstractmethod
    async def next_delivery_due(self, skip_hosts: Sequence[str] = (),
                                skip_keys: Sequence[str] = ()) -> int | None:
        """When the next pending delivery falls due: the earliest ``next_attempt_at``
        of an unleased one, or just past ``lease_until`` of a leased one (its lease
        lapses, and :meth:`claim_deliveries` takes it over)."""

    @abc.abstractmethod
    async def delivery_backlog(self) -> Backlog:
        """Pending deliveries: how many, and when the oldest was created."""

    @abc.abstractmethod
    async def set_signing_secret(self, key_id: str, secret: str, *,
                                 now: int) -> SigningSecret:
        """Store (or replace) the key's webhook signing secret."""

    @abc.abstractmethod
    async def signing_secret(self, key_id: str) -> SigningSecret | None: ...

    @abc.abstractmethod
    async def delete_signing_secret(self, key_id: str) -> bool:
        """Stop signing the key's callbacks; False when it had no secret."""
