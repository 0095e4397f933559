"""Prometheus metrics, on a registry of the app's own (no process globals)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, Protocol, Self, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WEBHOOK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600)


class _Labelled(Protocol):
    def labels(self, *values: str) -> Self: ...


M = TypeVar("M", bound=_Labelled)


class Children(Generic[M]):
    """A labelled metric on the path of every request or job, its children kept at
    hand: prometheus_client converts, locks and hashes on every ``labels()``. The
    label values here (routes, models, providers, states) come from the code and
    the config, so they stay few."""

    def __init__(self, metric: M) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def labels(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Children(Counter(
            "muxproxy_http_requests", "HTTP requests served", ["route", "method", "status"],
            registry=r))
        self.http_latency = Children(Histogram(
            "muxproxy_http_request_duration_seconds", "HTTP request latency",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r))
        self.job_transitions = Children(Counter(
            "muxproxy_job_transitions", "Jobs entering a state", ["model", "provider", "state"],
            registry=r))
        self.jobs = Gauge(
            "muxproxy_jobs", "Jobs in the store by model, provider and state",
            ["model", "provider", "state"], registry=r)
        self.job_duration = Children(Histogram(
            "muxproxy_job_duration_seconds", "Time from submit to a terminal state",
            ["model", "provider", "state"], buckets=JOB_BUCKETS, registry=r))
        self.jobs_in_flight = Children(Gauge(
            "muxproxy_jobs_in_flight", "Jobs a worker is running right now", ["provider"],
            registry=r))
        self.upstream_requests = Children(Counter(
            "muxproxy_upstream_requests", "Upstream provider calls by outcome",
            ["provider", "outcome"], registry=r))
        self.refused = Counter(
            "muxproxy_requests_refused", "Requests refused by reason", ["reason"], registry=r)
        self.credits_charged = Counter(
            "muxproxy_credits_charged", "Credits charged when jobs run", ["model"], registry=r)
        self.credits_refunded = Counter(
            "muxproxy_credits_refunded", "Credits given back for failed jobs (refunds of "
            "charges and releases of holds)", ["model"], registry=r)
        self.circuit_open = Gauge(
            "muxproxy_provider_circuit_open", "1 while a provider's circuit breaker is open",
            ["provider"], registry=r)
        self.storage_errors = Children(Counter(
            "muxproxy_storage_errors", "Failed operations on the gateway's own blob storage "
            "(write, read, delete, sign)", ["operation"], registry=r))
        self.upstream_latency = Children(Histogram(
            "muxproxy_upstream_request_duration_seconds", "Upstream call latency",
            ["provider"], buckets=JOB_BUCKETS, registry=r))

        self.webhook_deliveries = Counter(
            "muxproxy_webhook_deliveries", "Callback deliveries ended, by outcome "
            "(delivered, gone: the receiver said 410, expired: retry window passed)",
            ["outcome"], registry=r)
        self.webhook_attempts = Counter(
            "muxproxy_webhook_attempts", "Callback attempts by result (2xx..5xx, timeout, "
            "connect_error, refused, disconnected, error)", ["result"], registry=r)
        self.webhook_attempt_latency = Histogram(
            "muxproxy_webhook_attempt_duration_seconds", "One callback POST, start to answer",
            buckets=LATENCY_BUCKETS, registry=r)
        self.webhook_delivery_latency = Histogram(
            "muxproxy_webhook_delivery_latency_seconds",
            "From a task ending to its receiver's 2xx", buckets=WEBHOOK_BUCKETS, registry=r)
        self.webhook_backlog = Gauge(
            "muxproxy_webhook_backlog", "Callbacks not delivered yet and still retried",
            registry=r)
        self.webhook_oldest_pending_age = Gauge(
            "muxproxy_webhook_oldest_pending_age_seconds",
            "Age of the oldest callback not delivered yet", registry=r)
        self.webhooks_in_flight = Gauge(
            "muxproxy_webhooks_in_flight", "Callback attempts running right now", registry=r)

        # Leak watch: memory, descriptors (process_*, from /proc on Linux) and the
        # event loop's tasks should come back to their level once a load has passed.
        ProcessCollector(registry=r)
        # Under serve --workers each scrape reaches one of the workers: its pid says which.
        Gauge("muxproxy_process_info", "The process answering this scrape", ["pid"],
              registry=r).labels(str(os.getpid())).set(1)
        Gauge("muxproxy_event_loop_tasks", "asyncio tasks alive in the server's event loop",
              registry=r).set_function(_loop_tasks)

    def set_job_counts(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        self.jobs.clear()
        for (model, provider, state), count in counts.items():
            self.jobs.labels(model, provider, state).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SharedScrape:
    """Scrapes that arrive together share one collection and rendering.

    A scrape is CPU on the event loop; twenty scrapers polling in a loop would
    otherwise queue twenty of them ahead of every key check. A scrape joins the one being
    prepared, if any; a new one yields once first so that the scrapes ready at the
    same moment join it. Each answer is collected after its request arrived."""

    def __init__(self, collect: Callable[[], Awaitable[None]],
                 render: Callable[[], bytes]) -> None:
        self._collect = collect
        self._render = render
        self._flight: asyncio.Future[bytes] | None = None

    async def scrape(self) -> bytes:
        if self._flight is None:
            self._flight = asyncio.ensure_future(self._prepare())
        # Shielded: one scraper hanging up must not cancel the others' answer.
        return await asyncio.shield(self._flight)

    async def _prepare(self) -> bytes:
        try:
            await asyncio.sleep(0)
            await self._collect()
            return self._render()
        finally:
            self._flight = None


def _loop_tasks() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # rendered outside the event loop
        return 0.0
