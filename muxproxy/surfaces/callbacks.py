"""Callback (webhook) management for the native task API, in its error shape.

- ``GET /api/v1/webhooks/deliveries?task_id=``: a task's delivery and every attempt.
- ``POST /api/v1/webhooks/redeliver`` (``{"task_id"}``): send the callback again now,
  with a fresh retry window and the same ``webhook-id``. It counts against the key's
  rate limit, and is refused (409) while the delivery is still pending.
- ``POST|GET|DELETE /api/v1/webhooks/secret``: opt the key in to Standard Webhooks
  signatures (the secret is shown once, on POST), look, or opt out.

All act for the owning key only: another key's task is a 404, as on polling.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy.app_state import AppState
from muxproxy.clock import now_ms
from muxproxy.errors import Conflict, InvalidRequest, NotFound
from muxproxy.http import parse_json_object, read_body, surface
from muxproxy.pipeline.jobs import Job
from muxproxy.store import ApiKey
from muxproxy.surfaces.native import ok, render_error
from muxproxy.webhooks import signing
from muxproxy.webhooks.outbox import Attempt, Delivery, DeliveryPending, DeliveryStatus

MAX_BODY_BYTES = 4096


async def _task(state: AppState, key: ApiKey, task_id: Any) -> Job:
    if not isinstance(task_id, str) or not task_id:
        raise InvalidRequest("'task_id' is required", param="task_id")
    job = await state.gateway.job_for(key, task_id)
    if job.callback_url is None:
        raise NotFound("this task was created without a callback_url")
    return job


@surface(render_error)
async def list_deliveries(request: Request) -> Response:
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    job = await _task(state, key, request.query_params.get("task_id"))
    delivery = await state.store.get_delivery(job.id, key_id=key.id)
    if delivery is None:
        return ok({"taskId": job.id, "webhookId": None, "callbackUrl": job.callback_url,
                   "status": "awaiting_task", "attempts": []})
    attempts = await state.store.list_attempts(delivery.id)
    return ok(delivery_view(delivery, attempts))


@surface(render_error)
async def redeliver(request: Request) -> Response:
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    # Each redelivery is an outgoing POST the key asks for: it spends its rate.
    await state.gateway.admit(key)
    task_id = request.query_params.get("task_id")
    if task_id is None:
        body = parse_json_object(await read_body(request, MAX_BODY_BYTES))
        task_id = body.get("task_id")
    job = await _task(state, key, task_id)
    if not job.is_terminal:
        raise Conflict(f"this task is still {job.state.value}: its callback is sent when it "
                       "ends")
    try:
        delivery = await state.relay.redeliver(job)
    except DeliveryPending as exc:
        raise Conflict("this task's callback is still pending (status 'pending', attempt "
                       f"{exc.delivery.attempts + 1} due): redeliver once it has been "
                       "delivered or given up") from None
    return ok(delivery_view(delivery, await state.store.list_attempts(delivery.id)))


def delivery_view(delivery: Delivery, attempts: list[Attempt]) -> dict[str, Any]:
    pending = delivery.status is DeliveryStatus.PENDING
    return {
        "taskId": delivery.job_id,
        "webhookId": delivery.id,
        "callbackUrl": delivery.url,
        "status": delivery.status.value,
        "createTime": delivery.created_at,
        "nextAttemptTime": delivery.next_attempt_at if pending else None,
        "deliveredTime": delivery.delivered_at,
        "lastError": delivery.last_error,
        "attempts": [{"attempt": a.number, "time": a.started_at, "statusCode": a.status_code,
                      "latencyMs": a.latency_ms, "error": a.error, "response": a.response}
                     for a in attempts],
    }


@surface(render_error)
async def create_secret(request: Request) -> Response:
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    stored = await state.store.set_signing_secret(key.id, signing.new_secret(),
                                                  now=now_ms(state.clock))
    response = ok({"secret": stored.secret, "createTime": stored.created_at})
    response.headers["Cache-Control"] = "no-store"
    return response


@surface(render_error)
async def show_secret(request: Request) -> Response:
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    stored = await state.store.signing_secret(key.id)
    return ok({"enabled": stored is not None,
               "createTime": stored.created_at if stored is not None else None})


@surface(render_error)
async def delete_secret(request: Request) -> Response:
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    await state.store.delete_signing_secret(key.id)
    return ok({"enabled": False, "createTime": None})


routes = [
    Route("/api/v1/webhooks/deliveries", list_deliveries, methods=["GET"]),
    Route("/api/v1/webhooks/redeliver", redeliver, methods=["POST"]),
    Route("/api/v1/webhooks/secret", create_secret, methods=["POST"]),
    Route("/api/v1/webhooks/secret", show_secret, methods=["GET"]),
    Route("/api/v1/webhooks/secret", delete_secret, methods=["DELETE"]),
]
