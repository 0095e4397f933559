"""The native task API (docs/native-api.md): submit returns a ``taskId``; poll by
``task_id``; cancel (``POST .../cancel``, ``task_id`` in the query or the JSON body,
as for a redelivery); list the key's tasks (``GET .../list``, docs/history.md).
Errors as ``{"code", "msg", "data": null}`` with the same HTTP status."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy import history
from muxproxy import validation as v
from muxproxy.app_state import AppState
from muxproxy.errors import InvalidRequest, MuxError, UnsupportedMediaType
from muxproxy.gateway import Submission
from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.http import (
    JSONResponse,
    idempotency_claim,
    media_type,
    parse_json_object,
    read_body,
    surface,
)
from muxproxy.http import with_retry_after as _retry_after
from muxproxy.pipeline.jobs import Job, JobState
from muxproxy.surfaces import SurfaceName
from muxproxy.validation import UploadedImage

FIELDS = frozenset({
    "model", "prompt", "n", "size", "aspect_ratio", "resolution", "quality", "output_format",
    "image_url", "image_urls", "image_base64", "mask_base64", "image", "mask", "callback_url",
})
_BASE64_FIELDS = ("image_base64", "mask_base64", "image", "mask")
_IMAGE_FIELDS = frozenset({"image_url", "image_urls", "image_base64", "image"})
# A cancel's body holds a task id at most.
MAX_CANCEL_BODY_BYTES = 4096


def render_error(exc: MuxError) -> Response:
    return _retry_after(JSONResponse({"code": exc.status, "msg": exc.message, "data": None},
                                     status_code=exc.status), exc)


def ok(data: Any) -> JSONResponse:
    return JSONResponse({"code": 200, "msg": "success", "data": data})


@surface(render_error)
async def create_task(request: Request) -> Response:
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    if media_type(request) != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    body = parse_json_object(await read_body(request, state.settings.limits.max_body_bytes))
    job = await state.gateway.submit(key, SurfaceName.NATIVE, parse_submission(body, state),
                                     idempotency=idempotency_claim(request))
    return ok(created_view(job, []))


async def replay(request: Request, state: AppState, job: Job) -> Response:
    """A create call's retry (same Idempotency-Key): the job the first call created,
    as it stands now, with fresh result links."""
    return ok(created_view(job, await state.gateway.result_links(job)))


def created_view(job: Job, result_urls: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {"taskId": job.id, "state": job.state.value}
    if job.state is JobState.COMPLETED:
        data["resultUrls"] = result_urls
    elif job.state is JobState.FAILED:
        data["failCode"] = job.fail_code
        data["failMsg"] = job.fail_msg
    return data


@surface(render_error)
async def get_task(request: Request) -> Response:
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    task_id = request.query_params.get("task_id")
    if not task_id:
        raise InvalidRequest("'task_id' query parameter is required", param="task_id")
    job = await state.gateway.job_for(key, task_id)
    return ok(task_view(job, await state.gateway.result_links(job)))


@surface(render_error)
async def cancel_task(request: Request) -> Response:
    """End an unfinished task as failed (``failCode`` ``cancelled``); 409 once it ended."""
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    task_id: Any = request.query_params.get("task_id")
    if task_id is None:
        body = parse_json_object(await read_body(request, MAX_CANCEL_BODY_BYTES))
        task_id = body.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise InvalidRequest("'task_id' is required, in the query or the JSON body",
                             param="task_id")
    job = await state.gateway.cancel(key, task_id)
    return ok(task_view(job, []))


@surface(render_error)
async def list_tasks(request: Request) -> Response:
    """The key's tasks, newest first, with the cursor of the next page."""
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    page = await history.page(state.gateway, key, request.query_params)
    return ok({"tasks": [task_view(job, await state.gateway.result_links(job))
                         for job in page.jobs],
               "nextCursor": page.next_cursor})


def task_view(job: Job, result_urls: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {"taskId": job.id, "state": job.state.value, "model": job.served_by,
                            "createTime": job.created_at}
    if job.state is JobState.COMPLETED:
        data["resultUrls"] = result_urls
    if job.is_terminal:
        data["completeTime"] = job.completed_at
    if job.state is JobState.FAILED:
        data["failCode"] = job.fail_code
        data["failMsg"] = job.fail_msg
    return data


def parse_submission(body: dict[str, Any], state: AppState) -> Submission:
    limits = state.settings.limits
    v.unknown_fields(body, FIELDS)
    model = v.string(body, "model", required=True, max_len=200)
    assert model is not None
    state.gateway.model(model)
    # Reference images in the order the client's fields came in: a client may send
    # "image 1" as image_base64 and "image 2" in image_urls.
    images: list[ImageRef | UploadedImage] = []
    for name in body:
        if name not in _IMAGE_FIELDS or body[name] is None:
            continue
        value = body[name]
        if name == "image_urls" and not isinstance(value, list):
            raise InvalidRequest("'image_urls' must be an array of URLs", param="image_urls")
        for item in value if isinstance(value, list) else [value]:
            if name in ("image_url", "image_urls") or (
                    isinstance(item, str) and item.startswith(("http://", "https://"))):
                images.append(ImageRef(url=v.http_url(item, name)))
            else:
                images.append(v.decode_image(item, name, limits))
    mask_upload = None
    mask_ref = None
    for name in ("mask_base64", "mask"):
        value = body.get(name)
        if value is None:
            continue
        if mask_upload is not None or mask_ref is not None:
            raise InvalidRequest("send the mask once, as 'mask_base64' or 'mask'", param=name)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            mask_ref = ImageRef(url=v.http_url(value, name))
        else:
            mask_upload = v.decode_image(value, name, limits)
    if len(images) > limits.max_reference_images:
        raise InvalidRequest(f"at most {limits.max_reference_images} reference images",
                             param="image_urls")
    if (mask_upload or mask_ref) and not images:
        raise InvalidRequest("a mask needs a reference image to apply to", param="mask")
    callback = body.get("callback_url")
    request = GenerationRequest(
        prompt=v.prompt(body, limits),
        n=v.integer(body, "n", default=1, low=1, high=limits.max_n),
        size=v.size(body),
        aspect_ratio=v.aspect_ratio(body),
        resolution=v.resolution(body),
        quality=v.quality(body),
        output_format=v.output_format(body),
        mask=mask_ref,
    )
    return Submission(
        model=model, request=request, client_params=sanitized(body),
        images=images, mask_upload=mask_upload,
        callback_url=v.http_url(callback, "callback_url") if callback is not None else None)


def sanitized(body: dict[str, Any]) -> dict[str, Any]:
    """The request as the client sent it, with inline image data replaced by a note,
    for the callback's ``param`` (never base64 in the table or the webhook)."""
    clean = dict(body)
    for name in _BASE64_FIELDS:
        value = clean.get(name)
        if isinstance(value, list):
            clean[name] = [_placeholder(x) for x in value]
        elif value is not None:
            clean[name] = _placeholder(value)
    return clean


def _placeholder(value: Any) -> Any:
    if isinstance(value, str) and not value.startswith(("http://", "https://")):
        return f"<base64 image, {len(value)} chars>"
    return value


routes = [
    Route("/api/v1/images/generations", create_task, methods=["POST"]),
    Route("/api/v1/images/generations", get_task, methods=["GET"]),
    Route("/api/v1/images/generations/cancel", cancel_task, methods=["POST"]),
    Route("/api/v1/images/generations/list", list_tasks, methods=["GET"]),
]
