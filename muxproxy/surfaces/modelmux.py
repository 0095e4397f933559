"""The ModelMux-style generations API (docs/modelmux-api.md): submit returns a ``historyId`` at
once; poll ``GET /api/v1/generations/{id}``; fetch the bytes from ``.../image``; cancel
with ``POST .../cancel``; list the key's generations with ``GET /api/v1/generations``
(docs/history.md). Errors: ``{"error": "...", "code": "..."}``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy import history, images
from muxproxy import validation as v
from muxproxy.app_state import AppState
from muxproxy.clock import now_ms
from muxproxy.downloads import serve_blob
from muxproxy.errors import Expired, InvalidRequest, MuxError, NotFound
from muxproxy.forms import FormLimits, parse_form
from muxproxy.gateway import Submission
from muxproxy.generation import GenerationRequest
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
from muxproxy.pipeline.retention import results_expired
from muxproxy.pricing import resolution_of
from muxproxy.store import ApiKey
from muxproxy.surfaces import SurfaceName
from muxproxy.validation import UploadedImage

FIELDS = frozenset({"prompt", "model", "resolution", "quality", "aspectRatio"})


def render_error(exc: MuxError) -> Response:
    return _retry_after(JSONResponse({"error": exc.message, "code": exc.code},
                                     status_code=exc.status), exc)


@surface(render_error)
async def create(request: Request) -> Response:
    state: AppState = request.app.state.mux
    limits = state.settings.limits
    key = await state.auth.authenticate(request)
    kind = media_type(request)
    if kind not in ("application/json", "multipart/form-data"):
        raise InvalidRequest("send the body as application/json, or as multipart/form-data "
                             "with reference images")
    raw = await read_body(request, limits.max_body_bytes)
    uploads: list[UploadedImage] = []
    if kind == "application/json":
        body: dict[str, Any] = parse_json_object(raw)
    else:
        form = await parse_form(raw, request.headers["content-type"], FormLimits(
            max_parts=limits.max_reference_images + len(FIELDS),
            max_file_bytes=limits.max_image_bytes,
            max_field_bytes=limits.max_prompt_chars * 4 + 1024))
        body = dict(form.fields)
        # Every file part is a reference image, whatever its field name; a browser
        # form sends an unused file input as an empty part with no file name.
        uploads = [v.image_bytes(part.data, part.filename or part.name, limits)
                   for part in form.files if part.data or part.filename]
    v.unknown_fields(body, FIELDS)
    if len(uploads) > limits.max_reference_images:
        raise InvalidRequest(f"at most {limits.max_reference_images} reference images")
    job = await state.gateway.submit(key, SurfaceName.MODELMUX, submission(body, uploads, state),
                                     idempotency=idempotency_claim(request))
    return JSONResponse(created_view(job))


async def replay(request: Request, state: AppState, job: Job) -> Response:
    """A create call's retry (same Idempotency-Key): the job the first call created,
    as it stands now, with a fresh link to its image."""
    data = created_view(job)
    if job.state is JobState.COMPLETED:
        urls = await state.gateway.result_links(job)
        data["outputUrl"] = urls[0] if urls else None
    elif job.state is JobState.FAILED:
        data["errorMessage"] = job.fail_msg
    return JSONResponse(data)


def created_view(job: Job) -> dict[str, Any]:
    return {
        "historyId": job.id, "status": job.state.value, "model": job.model,
        "aspectRatio": job.request.aspect_ratio, "resolution": resolution_of(job.request),
        "creditsCharged": job.credits, "provider": job.provider, "createdAt": job.created_at,
    }


def submission(body: dict[str, Any], uploads: list[UploadedImage],
               state: AppState) -> Submission:
    model = state.gateway.model_or_default(v.string(body, "model", max_len=200))
    resolution = v.resolution(body) or (model.resolutions[0] if model.resolutions else "1k")
    # Without references the image is square unless asked otherwise; with them the
    # provider may follow the input's shape.
    aspect_ratio = v.aspect_ratio(body, "aspectRatio") or (None if uploads else "1:1")
    request = GenerationRequest(prompt=v.prompt(body, state.settings.limits),
                                resolution=resolution, quality=v.quality(body),
                                aspect_ratio=aspect_ratio)
    params = dict(body)
    if uploads:
        params["referenceImages"] = [f"<{u.content_type}, {len(u.data)} bytes>"
                                     for u in uploads]
    return Submission(model=model.id, request=request, client_params=params, uploads=uploads)


@surface(render_error)
async def status(request: Request) -> Response:
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    job = await _job(state, key, request.path_params["id"])
    urls = await state.gateway.result_links(job)
    return JSONResponse(generation_view(job, urls[0] if urls else None))


@surface(render_error)
async def cancel(request: Request) -> Response:
    """End an unfinished generation as failed (``code`` ``cancelled``); 409 once ended."""
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    try:
        job = await state.gateway.cancel(key, request.path_params["id"])
    except NotFound:
        raise NotFound("generation not found") from None
    return JSONResponse(generation_view(job, None))


@surface(render_error)
async def listing(request: Request) -> Response:
    """The key's generations, newest first, with the cursor of the next page."""
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    page = await history.page(state.gateway, key, request.query_params)
    generations = []
    for job in page.jobs:
        urls = await state.gateway.result_links(job)
        generations.append(generation_view(job, urls[0] if urls else None))
    return JSONResponse({"generations": generations, "nextCursor": page.next_cursor})


def generation_view(job: Job, output_url: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "historyId": job.id, "status": job.state.value, "provider": job.provider,
        "outputUrl": output_url if job.state is JobState.COMPLETED else None,
        # A failed generation is refunded: nothing used.
        "creditsUsed": 0 if job.state is JobState.FAILED else job.credits,
        "model": job.model, "resolution": resolution_of(job.request),
        "aspectRatio": job.request.aspect_ratio, "createdAt": job.created_at,
        "completedAt": job.completed_at if job.is_terminal else None,
    }
    if job.state is JobState.FAILED:
        data["errorMessage"] = job.fail_msg
        data["code"] = job.fail_code
    return data


@surface(render_error)
async def image(request: Request) -> Response:
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    job = await _job(state, key, request.path_params["id"])
    if job.state is JobState.FAILED:
        error = NotFound(f"generation failed, no image: {job.fail_msg}")
        error.code = "generation_failed"
        raise error
    if job.result is None or not job.result.images:
        error = NotFound(f"image not ready yet: the generation is {job.state.value}")
        error.code = "not_ready"
        raise error
    if results_expired(job, state.settings.storage, now_ms(state.clock)):
        raise Expired()
    stored = job.result.images[0]
    extension = images.EXTENSIONS.get(stored.content_type, "bin")
    storage = state.settings.storage
    return await serve_blob(request, state.storage, stored.key,
                            content_type=stored.content_type, render=render_error,
                            missing="the image file is missing",
                            filename=f"{job.id}.{extension}",
                            redirect_ttl=storage.url_ttl_seconds if storage.redirect else None,
                            metrics=state.metrics)


async def _job(state: AppState, key: ApiKey, job_id: str) -> Job:
    try:
        return await state.gateway.job_for(key, job_id)
    except NotFound:
        raise NotFound("generation not found") from None


routes = [
    Route("/api/v1/generations", create, methods=["POST"]),
    Route("/api/v1/generations", listing, methods=["GET"]),
    Route("/api/v1/generations/{id}/cancel", cancel, methods=["POST"]),
    Route("/api/v1/generations/{id}", status, methods=["GET"]),
    Route("/api/v1/generations/{id}/image", image, methods=["GET"]),
]
