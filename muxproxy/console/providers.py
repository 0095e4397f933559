"""Providers (the operator's): each provider's circuit, its jobs in flight, and its
error rate and latency over the last hour."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from starlette.responses import Response

from muxproxy.clock import now_ms
from muxproxy.console.pages import Ctx, page
from muxproxy.pipeline.jobs import JobState
from muxproxy.store.jobs import JobQuery

HOUR_MS = 3_600_000
# Jobs read per provider for the hour's figures; the page says when it hit this.
SAMPLE = 2000


@dataclass(frozen=True)
class Health:
    name: str
    kind: str
    circuit: str
    processing: int
    queued: int
    jobs: int
    failed: int
    error_rate: str
    p50_ms: int | None
    p95_ms: int | None
    sampled: bool


def _percentile(values: list[int], fraction: float) -> int | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return round(statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1])


@page(operator=True)
async def providers(ctx: Ctx) -> Response:
    state = ctx.state
    counts = await state.store.count_jobs()
    since = now_ms(state.clock) - HOUR_MS
    rows = []
    for name, settings in sorted(state.settings.providers.items()):
        in_state = {s: sum(n for (_, p, st), n in counts.items() if p == name and st == s)
                    for s in (JobState.PROCESSING.value, JobState.PENDING.value)}
        recent = await state.store.find_jobs(JobQuery(provider=name, since=since, limit=SAMPLE))
        ended = [j for j in recent if j.is_terminal]
        failed = sum(j.state is JobState.FAILED for j in ended)
        took = sorted(j.completed_at - j.created_at for j in ended
                      if j.state is JobState.COMPLETED and j.completed_at is not None)
        breaker = state.breakers.get(name)
        rows.append(Health(
            name=name, kind=settings.kind,
            circuit=breaker.state.value if breaker is not None else "closed",
            processing=in_state[JobState.PROCESSING.value],
            queued=in_state[JobState.PENDING.value], jobs=len(recent), failed=failed,
            error_rate=f"{failed / len(ended):.1%}" if ended else "none ended",
            p50_ms=_percentile(took, 0.5), p95_ms=_percentile(took, 0.95),
            sampled=len(recent) == SAMPLE))
    return ctx.render("providers.html", rows=rows, sample=SAMPLE)
