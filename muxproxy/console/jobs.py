"""Jobs: a list filtered by state, model, provider, key and time, with thumbnails;
a job's page (its request with images redacted, route and attempts, timings, cost,
result images, webhook deliveries); redelivery; and a small status read for the
playground's progress."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from muxproxy.clock import now_ms
from muxproxy.console.pages import Ctx, page
from muxproxy.errors import Conflict, InvalidRequest, NotFound
from muxproxy.pipeline.jobs import Job, JobState
from muxproxy.pipeline.retention import results_expired
from muxproxy.store.jobs import JobQuery
from muxproxy.webhooks.outbox import DeliveryPending, DeliveryStatus

PAGE_SIZE = 50
# The time filter: label, and how far back in ms (None: any time).
SINCE: Mapping[str, tuple[str, int | None]] = {
    "": ("any time", None), "1h": ("last hour", 3_600_000),
    "24h": ("last 24 hours", 86_400_000), "7d": ("last 7 days", 7 * 86_400_000),
    "30d": ("last 30 days", 30 * 86_400_000),
}


def _query(ctx: Ctx) -> tuple[JobQuery, dict[str, str]]:
    params = ctx.request.query_params
    chosen = {name: params.get(name, "").strip()
              for name in ("state", "model", "provider", "key", "since", "before", "after")}
    if chosen["state"] and chosen["state"] not in {s.value for s in JobState}:
        raise InvalidRequest(f"unknown state {chosen['state']!r}")
    if chosen["since"] not in SINCE:
        raise InvalidRequest(f"unknown time filter {chosen['since']!r}")
    before = chosen["before"]
    if before and not (before.isascii() and before.isdigit() and len(before) < 19):
        raise InvalidRequest("'before' must be a time in milliseconds")
    back = SINCE[chosen["since"]][1]
    query = JobQuery(
        key_id=chosen["key"] or None, state=JobState(chosen["state"]) if chosen["state"] else None,
        model=chosen["model"] or None, provider=chosen["provider"] or None,
        since=now_ms(ctx.state.clock) - back if back is not None else None,
        before=int(before) if before else None, before_id=chosen["after"] or None,
        limit=PAGE_SIZE)
    return query, chosen


async def thumbnail(ctx: Ctx, job: Job) -> str | None:
    if job.result is None or not job.result.images:
        return None
    if results_expired(job, ctx.state.settings.storage, now_ms(ctx.state.clock)):
        return None
    return await ctx.state.gateway.result_link(job.result.images[0])


@page()
async def list_jobs(ctx: Ctx) -> Response:
    assert ctx.viewer is not None
    query, chosen = _query(ctx)
    # A team's query is narrowed to its own key by the gateway, whatever it asked.
    found = await ctx.state.gateway.find_jobs(ctx.viewer.key, query)
    names: dict[str, str] = {}
    if ctx.viewer.operator:
        names = {k.id: k.name for k in await ctx.state.store.list_keys()}
    # The next page starts right after the last job shown (``after`` is its id).
    more = ctx.url("/jobs", **dict(chosen, before=found[-1].created_at, after=found[-1].id)) \
        if len(found) == PAGE_SIZE else None
    return ctx.render("jobs.html", jobs=[(job, await thumbnail(ctx, job)) for job in found],
                      chosen=chosen, states=[s.value for s in JobState],
                      models=sorted(ctx.state.settings.models),
                      providers=sorted(ctx.state.settings.providers), key_names=names,
                      since=SINCE, more=more)


def redacted(value: Any) -> Any:
    """A request as stored, with every image (URL, stored upload, data) replaced by
    a note of its kind: the page shows what was asked, not the pictures."""
    if isinstance(value, Mapping):
        if "blob" in value or "url" in value:
            kind = value.get("content_type") or "image"
            return f"[{kind} {'uploaded' if 'blob' in value else 'by URL'}, redacted]"
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    if isinstance(value, str) and (value.startswith("data:") or len(value) > 2000):
        return f"[{len(value)} characters redacted]"
    return value


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


async def _job(ctx: Ctx) -> Job:
    assert ctx.viewer is not None
    return await ctx.state.gateway.job_seen_by(ctx.viewer.key, ctx.request.path_params["id"])


@page()
async def show_job(ctx: Ctx) -> Response:
    job = await _job(ctx)
    state = ctx.state
    key_id = None if ctx.viewer is None or ctx.viewer.operator else job.key_id
    delivery = await state.store.get_delivery(job.id, key_id=key_id) \
        if job.callback_url is not None else None
    attempts = await state.store.list_attempts(delivery.id) if delivery is not None else []
    model = state.settings.models.get(job.model)
    expired = results_expired(job, state.settings.storage, now_ms(state.clock))
    links = [] if expired else await state.gateway.result_links(job)
    owner = await state.store.get_key(job.key_id) if ctx.viewer and ctx.viewer.operator \
        else None
    return ctx.render(
        "job.html", job=job, routes=model.routes if model is not None else (),
        request_json=_pretty(redacted(job.request.to_json())),
        client_json=_pretty(redacted(dict(job.client_params))), links=links,
        expired=expired, delivery=delivery, attempts=attempts, owner=owner,
        pending=delivery is not None and delivery.status is DeliveryStatus.PENDING,
        notice=ctx.request.query_params.get("done", ""))


@page()
async def job_status(ctx: Ctx) -> Response:
    """The job's progress as JSON, read by the playground page's script."""
    job = await _job(ctx)
    body = {"id": job.id, "state": job.state.value, "attempts": job.attempts,
            "polls": job.polls, "images": await ctx.state.gateway.result_links(job),
            "failure": job.fail_msg, "page": ctx.url(f"/jobs/{job.id}")}
    return Response(orjson.dumps(body), media_type="application/json")


@page()
async def redeliver(ctx: Ctx) -> Response:
    await ctx.form()
    job = await _job(ctx)
    assert ctx.viewer is not None
    if ctx.viewer.key is not None:
        await ctx.state.gateway.admit(ctx.viewer.key)  # as on the API: it spends the key's rate
    if job.callback_url is None:
        raise NotFound("this job was created without a callback URL")
    if not job.is_terminal:
        raise Conflict(f"this job is still {job.state.value}: its callback is sent when it ends")
    try:
        await ctx.state.relay.redeliver(job)
    except DeliveryPending:
        raise Conflict("this job's callback is still pending: redeliver once it has been "
                       "delivered or given up") from None
    return ctx.redirect(f"/jobs/{job.id}", done="redelivered")


@page()
async def cancel(ctx: Ctx) -> Response:
    """Cancel a running job through the gateway, as its key would on the API; the
    operator cancels on behalf of the job's key."""
    await ctx.form()
    job = await _job(ctx)
    assert ctx.viewer is not None
    key = ctx.viewer.key or await ctx.state.store.get_key(job.key_id)
    if key is None:
        raise NotFound("the job's key is gone")
    await ctx.state.gateway.cancel(key, job.id)
    return ctx.redirect(f"/jobs/{job.id}", done="cancelled")
