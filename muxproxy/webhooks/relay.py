"""The webhook relay: a background loop that delivers the outbox.

The loop is the scheduler's (:class:`~muxproxy.pipeline.worker.WorkerLoop`): a job
turning terminal wakes it (a :class:`~muxproxy.pipeline.events.JobEvents` subscriber), the
timer is the earliest ``next_attempt_at``, and ``start`` picks up what a previous
process left. Each claimed delivery runs as its own task, at most
``max_concurrency`` at once, ``max_per_host`` per receiver and ``max_per_key`` per
API key, each attempt bounded by ``attempt_timeout_seconds``: a slow receiver, or
one tenant's many silent ones, only ever holds its own slots, and the job pipeline
never waits for a receiver.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import structlog

from muxproxy.clock import Clock, now_ms
from muxproxy.logs import get_logger
from muxproxy.metrics import Metrics
from muxproxy.pipeline.jobs import Job
from muxproxy.pipeline.worker import WorkerLoop
from muxproxy.settings import WebhookSettings
from muxproxy.store import Store
from muxproxy.webhooks import signing
from muxproxy.webhooks.outbox import Attempt, Delivery, DeliveryStatus, Verdict
from muxproxy.webhooks.payload import callback_body
from muxproxy.webhooks.schedule import (
    Outcome,
    classify,
    honours_retry_after,
    next_attempt_at,
    parse_retry_after,
)
from muxproxy.webhooks.sender import Reply, Sender
from muxproxy.webhooks.ssrf import CallbackGuard

log = get_logger("muxproxy.webhooks")

SWEEP_SECONDS = 5.0
LEASE_MARGIN_SECONDS = 30.0


class WebhookRelay(WorkerLoop[Delivery, None]):
    def __init__(self, settings: WebhookSettings, store: Store, clock: Clock,
                 metrics: Metrics, guard: CallbackGuard,
                 result_urls: Callable[[Job], Awaitable[list[str]]],
                 rand: Callable[[], float] = random.random) -> None:
        super().__init__(clock, log, name="webhooks", label="webhook relay",
                         sweep_seconds=SWEEP_SECONDS)
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.guard = guard
        self.result_urls = result_urls
        self.rand = rand
        self.sender = Sender(guard, settings.attempt_timeout_seconds, settings.max_concurrency)
        # Deliveries whose attempt has not been recorded yet. Not the same as the
        # ids in ``_running``: a task stays there a moment after it recorded (and
        # released) its attempt, and its delivery may be claimed again meanwhile.
        self._attempting: set[str] = set()
        self._per_host: Counter[str] = Counter()
        self._per_key: Counter[str] = Counter()

    async def start(self) -> None:
        await self.sender.start()
        recovered = await self.store.recover_deliveries(self.owner)
        if recovered:
            log.info("took back webhook deliveries after restart", count=recovered)
        self._start_loop()

    def on_job(self, job: Job) -> None:
        """JobEvents subscriber: a terminal job may have just queued a callback."""
        if job.callback_url is not None and job.is_terminal:
            self.wake()

    async def redeliver(self, job: Job) -> Delivery:
        delivery = await self.store.redeliver(job, now=now_ms(self.clock))
        log.info("webhook redelivery requested", job_id=job.id, webhook_id=delivery.id)
        self.wake()
        return delivery

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming; let attempts in flight finish within ``grace_seconds``, then
        cancel them and hand their leases back (the next start sends them again)."""
        await super().stop(grace_seconds)
        await self.sender.aclose()
        await self.guard.aclose()

    async def refresh_metrics(self) -> None:
        backlog = await self.store.delivery_backlog()
        self.metrics.webhook_backlog.set(backlog.pending)
        oldest = backlog.oldest_created_at
        self.metrics.webhook_oldest_pending_age.set(
            max(0.0, (now_ms(self.clock) - oldest) / 1000) if oldest is not None else 0.0)

    # -- the loop -------------------------------------------------------------

    def _busy_hosts(self) -> list[str]:
        return [h for h, n in self._per_host.items() if n >= self.settings.max_per_host]

    def _busy_keys(self) -> list[str]:
        return [k for k, n in self._per_key.items() if n >= self.settings.max_per_key]

    def _at_limit(self, delivery: Delivery) -> bool:
        return (self._per_host[delivery.host] >= self.settings.max_per_host
                or self._per_key[delivery.key_id] >= self.settings.max_per_key)

    async def _pass(self) -> None:
        free = self.settings.max_concurrency - len(self._running)
        if free <= 0 or self._stopping:
            return
        now = now_ms(self.clock)
        lease = int((self.settings.attempt_timeout_seconds + LEASE_MARGIN_SECONDS) * 1000)
        claimed = await self.store.claim_deliveries(now, free, self.owner, now + lease,
                                                    self._busy_hosts(), self._busy_keys())
        for delivery in claimed:
            if delivery.id in self._attempting:
                continue  # our own lease, lapsed on a clock jump; the attempt is running
            if self._at_limit(delivery):
                await self._release(delivery)
                continue
            self._send(delivery)

    async def _next_wake(self) -> int:
        """When to look again (ms): the next due delivery, or a sweep."""
        sweep = now_ms(self.clock) + int(SWEEP_SECONDS * 1000)
        if len(self._running) >= self.settings.max_concurrency:
            return sweep  # a finishing attempt wakes the loop
        due = await self.store.next_delivery_due(self._busy_hosts(), self._busy_keys())
        return sweep if due is None else min(sweep, due)

    def _send(self, delivery: Delivery) -> None:
        self._per_host[delivery.host] += 1
        self._per_key[delivery.key_id] += 1
        self.metrics.webhooks_in_flight.inc()
        self._attempting.add(delivery.id)
        self._spawn(delivery, f"webhook-{delivery.id}")

    def _finished(self, task: asyncio.Task[None], delivery: Delivery) -> None:
        self._per_host[delivery.host] -= 1
        if self._per_host[delivery.host] <= 0:
            del self._per_host[delivery.host]
        self._per_key[delivery.key_id] -= 1
        if self._per_key[delivery.key_id] <= 0:
            del self._per_key[delivery.key_id]
        self.metrics.webhooks_in_flight.dec()
        self._wake.set()

    async def _release(self, delivery: Delivery) -> None:
        await self.store.release_delivery(delivery.id, self.owner)

    # -- one attempt ------------------------------------------------------------

    async def _execute(self, delivery: Delivery) -> None:
        try:
            await self._attempt_and_record(delivery)
        finally:
            self._attempting.discard(delivery.id)

    async def _attempt_and_record(self, delivery: Delivery) -> None:
        structlog.contextvars.bind_contextvars(job_id=delivery.job_id, webhook_id=delivery.id)
        started = now_ms(self.clock)
        try:
            reply = await self._attempt(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook attempt failed unexpectedly")
            reply = Reply(latency_ms=0, error="internal: the gateway could not send it")
        attempt = Attempt(started_at=started, latency_ms=reply.latency_ms,
                          status_code=reply.status, error=reply.error, response=reply.preview)
        verdict = self._verdict(delivery, reply, started)
        try:
            updated = await self.store.record_attempt(
                delivery.id, self.owner, attempt, verdict, now=now_ms(self.clock),
                keep=self.settings.max_attempts_kept)
        except Exception:
            log.exception("could not record a webhook attempt")
            await self._release(delivery)
            return
        if updated is None:
            log.warning("webhook delivery changed hands during an attempt")
            return
        self._observe(updated, reply, verdict)

    async def _attempt(self, delivery: Delivery) -> Reply:
        job = await self.store.get_job(delivery.job_id)
        if job is None:
            return Reply(latency_ms=0, error="internal: the task no longer exists")
        body = callback_body(job, await self.result_urls(job))
        secret = await self.store.signing_secret(delivery.key_id)
        headers = signing.headers(delivery.id, int(self.clock.now()), body,
                                  secret.secret if secret is not None else None)
        # The key's grant as it is now: a network taken back is refused from then on.
        key = await self.store.get_key(delivery.key_id)
        allow = key.limits.webhook_allow_networks if key is not None else ()
        return await self.sender.post(delivery.url, body, headers, allow)

    def _verdict(self, delivery: Delivery, reply: Reply, started: int) -> Verdict:
        window = self.settings.retry_window_seconds
        window_ends = delivery.window_ends_at or started + int(window * 1000)
        outcome = classify(reply.status)
        if outcome is Outcome.DELIVERED:
            return Verdict(DeliveryStatus.DELIVERED, None, window_ends)
        if outcome is Outcome.GONE:
            return Verdict(DeliveryStatus.FAILED, None, window_ends,
                           "the receiver answered 410 Gone: not retrying")
        problem = reply.error or f"HTTP {reply.status}"
        retry_after = (parse_retry_after(reply.retry_after, self.clock.now())
                       if honours_retry_after(reply.status) else None)
        at = next_attempt_at(delivery.round_attempts + 1, now_ms(self.clock), window_ends,
                             self.settings, retry_after, self.rand)
        if at is None:
            return Verdict(DeliveryStatus.FAILED, None, window_ends,
                           f"gave up: no 2xx within the {window:g} s retry window "
                           f"(last: {problem})")
        return Verdict(DeliveryStatus.PENDING, at, window_ends, problem)

    def _observe(self, delivery: Delivery, reply: Reply, verdict: Verdict) -> None:
        m = self.metrics
        m.webhook_attempts.labels(reply.result).inc()
        m.webhook_attempt_latency.observe(reply.latency_ms / 1000)
        fields = {"host": delivery.host, "attempt": delivery.attempts,
                  "status": reply.status, "ms": reply.latency_ms}
        if verdict.status is DeliveryStatus.DELIVERED:
            m.webhook_deliveries.labels("delivered").inc()
            m.webhook_delivery_latency.observe(
                max(0, now_ms(self.clock) - delivery.created_at) / 1000)
            log.info("webhook delivered", **fields)
        elif verdict.status is DeliveryStatus.FAILED:
            m.webhook_deliveries.labels("gone" if reply.status == 410 else "expired").inc()
            log.warning("webhook given up", reason=verdict.reason, **fields)
        else:
            log.info("webhook attempt failed", error=reply.error, retry_at=verdict.next_attempt_at,
                     **fields)
