"""The native task API (``surfaces/native.py``) and its callback management
(``surfaces/callbacks.py``): ``{"code", "msg", "data"}`` envelopes."""

from __future__ import annotations

from typing import Any

from muxproxy.openapi import fields
from muxproxy.openapi.common import (
    API_KEY,
    IDEMPOTENCY_KEY,
    Part,
    Schema,
    answer,
    choice,
    errors,
    history_params,
    integer,
    json_body,
    millis,
    nullable,
    obj,
    operation,
    query,
    ref,
    string,
    url,
    whole_number,
)
from muxproxy.settings import Settings
from muxproxy.surfaces import callbacks

TAG = "Native task API"
SHAPE = "NativeError"
STATES = ["pending", "processing", "completed", "failed"]


def envelope(data: Schema) -> Schema:
    return obj({"code": {"const": 200}, "msg": {"const": "success"}, "data": data},
               ["code", "msg", "data"])


def task_request(settings: Settings) -> Schema:
    limits = settings.limits
    count = limits.max_reference_images
    reference = fields.image_ref("A reference image.")
    one_or_many = nullable({"anyOf": [reference, {"type": "array", "items": reference,
                                                  "maxItems": count}]})
    return obj({
        "model": fields.model(settings, required=True),
        "prompt": fields.prompt(limits),
        "n": whole_number(1, limits.max_n, "How many images (default 1)."),
        "size": fields.size(),
        "aspect_ratio": fields.aspect_ratio(),
        "resolution": fields.resolution(),
        "quality": fields.quality(),
        "output_format": fields.output_format(),
        "image_url": nullable(url("A reference image to edit or follow.")),
        "image_urls": nullable({"type": "array", "maxItems": count,
                                "items": url("A reference image.")}),
        "image_base64": one_or_many,
        "image": one_or_many,
        "mask_base64": nullable(fields.image_ref("The mask (needs a reference image).")),
        "mask": nullable(fields.image_ref("The mask (needs a reference image).")),
        "callback_url": nullable(url("Receives the task's result when it ends; must reach a "
                                     "public address.")),
    }, ["model", "prompt"], description=(
        f"At most {count} reference images in all (image_url, image_urls, image_base64, "
        "image); send the mask once, as mask_base64 or mask. null is the same as leaving a "
        "field out."))


def task_view() -> Schema:
    return obj({
        "taskId": string(),
        "state": choice(STATES),
        "model": string("<provider>/<model name>: the upstream serving the task."),
        "createTime": millis("When the task was created"),
        "resultUrls": {"type": "array", "items": string(format="uri"),
                       "description": "Signed links to the images (completed tasks)."},
        "completeTime": millis("When the task ended"),
        "failCode": nullable(string()),
        "failMsg": nullable(string()),
    }, ["taskId", "state", "model", "createTime"])


def delivery_view() -> Schema:
    attempt = obj({
        "attempt": integer(minimum=0), "time": millis("When the attempt started"),
        "statusCode": nullable(integer()), "latencyMs": integer(minimum=0),
        "error": nullable(string()), "response": nullable(string()),
    }, ["attempt", "time", "statusCode", "latencyMs", "error", "response"])
    return obj({
        "taskId": string(),
        "webhookId": nullable(string("The webhook-id header of every attempt.")),
        "callbackUrl": string(),
        "status": choice(["awaiting_task", "pending", "delivered", "failed"]),
        "createTime": millis("When the delivery was written"),
        "nextAttemptTime": nullable(integer()),
        "deliveredTime": nullable(integer()),
        "lastError": nullable(string()),
        "attempts": {"type": "array", "items": attempt},
    }, ["taskId", "webhookId", "callbackUrl", "status", "attempts"])


def part(settings: Settings) -> Part:
    schemas: dict[str, Schema] = {
        SHAPE: obj({"code": integer("The HTTP status, repeated."), "msg": string(),
                    "data": {"type": "null"}}, ["code", "msg", "data"]),
        "NativeTaskRequest": task_request(settings),
        "NativeTaskCreated": envelope(obj({
            "taskId": string(), "state": choice(STATES),
            "resultUrls": {"type": "array", "items": string(format="uri"), "description":
                           "A replay (Idempotency-Key) of a completed task: fresh links."},
            "failCode": nullable(string("A replay of a failed task: why.")),
            "failMsg": nullable(string()),
        }, ["taskId", "state"])),
        "NativeTask": envelope(task_view()),
        "NativeTaskList": envelope(obj({
            "tasks": {"type": "array", "items": task_view(),
                      "description": "The key's tasks, newest first."},
            "nextCursor": nullable(string("The 'before' of the next page; null on the "
                                          "last.")),
        }, ["tasks", "nextCursor"])),
    }
    task_id = query("task_id", string(minLength=1), "The task id from the create call.",
                    required=True)
    paths: dict[str, dict[str, Any]] = {
        "/api/v1/images/generations": {
            "post": operation(
                "Create an image task", TAG, operation_id="createTask", security=API_KEY,
                parameters=[IDEMPOTENCY_KEY], body=json_body(ref("NativeTaskRequest")),
                description="Answers at once with the task id; poll it, or pass "
                            "callback_url to be called when it ends.",
                responses={"200": answer("The task is stored.", ref("NativeTaskCreated")),
                           **errors(SHAPE, CREATE_ERRORS)}),
            "get": operation(
                "Poll a task", TAG, operation_id="getTask", security=API_KEY,
                parameters=[task_id],
                responses={"200": answer("The task.", ref("NativeTask")),
                           **errors(SHAPE, {400: "'task_id' is missing.", **READ_ERRORS})}),
        },
        "/api/v1/images/generations/cancel": {"post": operation(
            "Cancel a task", TAG, operation_id="cancelTask", security=API_KEY,
            parameters=[query("task_id", string(minLength=1),
                              "The task; when given, the body is not read.")],
            body=json_body(obj({"task_id": string(minLength=1)}, ["task_id"], closed=False),
                           required=False),
            description="A pending or processing task ends as failed with failCode "
                        "'cancelled'; its hold is released or its charge refunded, its "
                        "callback is sent, and the upstream job is cancelled where the "
                        "provider can (docs/history.md). The task id comes from the query "
                        "or the JSON body.",
            responses={"200": answer("The task, cancelled.", ref("NativeTask")),
                       **errors(SHAPE, {400: "no task id, or a malformed body.",
                                        **READ_ERRORS,
                                        409: "the task has ended already.",
                                        413: "the body is over 4096 bytes."})})},
        "/api/v1/images/generations/list": {"get": operation(
            "List the key's tasks", TAG, operation_id="listTasks", security=API_KEY,
            parameters=history_params(),
            description="Newest first; pass nextCursor as 'before' for the next page.",
            responses={"200": answer("A page of tasks.", ref("NativeTaskList")),
                       **errors(SHAPE, {400: "an invalid limit or before.",
                                        **AUTH_ERRORS})})},
    }
    return Part(paths=paths, schemas=schemas)


def callbacks_part(settings: Settings) -> Part:
    """The callback management routes: the native shape, under its tag."""
    schemas: dict[str, Schema] = {
        "WebhookDelivery": envelope(delivery_view()),
        "WebhookSecretCreated": envelope(obj({
            "secret": string("The Standard Webhooks signing secret (whsec_...); shown once."),
            "createTime": millis("When it was made")}, ["secret", "createTime"])),
        "WebhookSecretState": envelope(obj({
            "enabled": {"type": "boolean"}, "createTime": nullable(integer())},
            ["enabled", "createTime"])),
    }
    task_id = query("task_id", string(minLength=1), "The task id from the create call.",
                    required=True)
    paths: dict[str, dict[str, Any]] = {
        "/api/v1/webhooks/deliveries": {"get": operation(
            "A task's callback delivery and its attempts", TAG,
            operation_id="getWebhookDelivery", security=API_KEY, parameters=[task_id],
            responses={"200": answer("The delivery.", ref("WebhookDelivery")),
                       **errors(SHAPE, {400: "'task_id' is missing.", **READ_ERRORS})})},
        "/api/v1/webhooks/redeliver": {"post": operation(
            "Send a task's callback again", TAG, operation_id="redeliverWebhook",
            security=API_KEY,
            parameters=[query("task_id", string(minLength=1),
                              "The task; when given, the body is not read.")],
            body=json_body(obj({"task_id": string(minLength=1)}, ["task_id"], closed=False),
                           required=False),
            description="Re-arms the delivery with a fresh retry window and the same "
                        "webhook-id. The task id comes from the query or the JSON body. "
                        "Counts against the key's rate limit; one redelivery at a time.",
            responses={"200": answer("The delivery, re-armed.", ref("WebhookDelivery")),
                       **errors(SHAPE, {
                           400: "no task id, or a malformed body.", **READ_ERRORS,
                           409: "the task has not ended yet, or its delivery is still "
                                "pending.",
                           429: "the key's rate limit is reached.",
                           413: f"the body is over {callbacks.MAX_BODY_BYTES} bytes."})})},
        "/api/v1/webhooks/secret": {
            "post": operation(
                "Turn on signed callbacks (new secret)", TAG,
                operation_id="createWebhookSecret", security=API_KEY,
                responses={"200": answer("The secret, shown only here.",
                                         ref("WebhookSecretCreated")),
                           **errors(SHAPE, AUTH_ERRORS)}),
            "get": operation(
                "Whether callbacks are signed", TAG, operation_id="getWebhookSecret",
                security=API_KEY,
                responses={"200": answer("The state.", ref("WebhookSecretState")),
                           **errors(SHAPE, AUTH_ERRORS)}),
            "delete": operation(
                "Turn off signed callbacks", TAG, operation_id="deleteWebhookSecret",
                security=API_KEY,
                responses={"200": answer("Signing is off.", ref("WebhookSecretState")),
                           **errors(SHAPE, AUTH_ERRORS)}),
        },
    }
    return Part(paths=paths, schemas=schemas)


AUTH_ERRORS = {401: "missing or invalid API key.", 500: "unexpected server error."}
READ_ERRORS = {401: "missing or invalid API key.",
               404: "no such task for this key (or it has no callback_url).",
               500: "unexpected server error."}
CREATE_ERRORS = {
    400: "an invalid or missing field (msg names it), an unknown model, a reference URL "
         "whose host is not public, or a request the model's provider cannot serve.",
    401: "missing or invalid API key.",
    402: "the key's credits do not cover the price.",
    403: "the key may not use this model.",
    409: "a request with this Idempotency-Key is still creating its job.",
    413: "the body is over limits.max_body_bytes, or an image over limits.max_image_bytes.",
    415: "the body is not application/json, or an inline image is not an image.",
    422: "this Idempotency-Key was used with another body.",
    429: "the key's rate or concurrency limit is reached.",
    500: "unexpected server error.",
    503: "the gateway could not store the uploaded images; try again after Retry-After.",
}
