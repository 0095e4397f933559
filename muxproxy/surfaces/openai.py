"""The OpenAI-compatible images API (docs/openai-api.md), for the
official SDKs pointed at ``base_url=<gateway>/v1``.

``POST /v1/images/*`` creates a job like any surface, then waits for it (bounded by
``surfaces.openai_wait_seconds``; by default the job's whole life) and answers as
OpenAI does. The job id leaves in the ``x-muxproxy-job-id`` header; a client that
hangs up or times out can poll it on the native task API, or retry with the first
call's Idempotency-Key to wait for the same job.
Errors: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy import images
from muxproxy import validation as v
from muxproxy.app_state import AppState
from muxproxy.errors import InvalidRequest, MuxError, NotFound, StillRunning, UpstreamFailed
from muxproxy.forms import FormLimits, Part, parse_form
from muxproxy.gateway import Submission
from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.http import (
    JSONResponse,
    idempotency_claim,
    media_type,
    parse_json_object,
    read_body,
    surface,
    unless_hung_up,
)
from muxproxy.http import with_retry_after as _retry_after
from muxproxy.logs import get_logger
from muxproxy.pipeline.events import EndWatch
from muxproxy.pipeline.jobs import Job, JobState
from muxproxy.settings import ModelSettings, Settings
from muxproxy.store import ApiKey
from muxproxy.surfaces import SurfaceName
from muxproxy.validation import UploadedImage

log = get_logger("muxproxy.openai")

JOB_HEADER = "x-muxproxy-job-id"
GENERATE_FIELDS = frozenset({
    "model", "prompt", "n", "size", "quality", "response_format", "style", "background",
    "output_format", "output_compression", "moderation", "user", "safety_identifier", "stream",
})
EDIT_FIELDS = GENERATE_FIELDS | {"input_fidelity", "images", "mask"}
_IMAGE_PARTS = ("image", "image[]")
# Passed to providers in ``GenerationRequest.extra`` under these names when sent.
CHOICES: Mapping[str, tuple[str, ...]] = {
    "style": ("vivid", "natural"), "background": ("transparent", "opaque", "auto"),
    "moderation": ("low", "auto"), "input_fidelity": ("high", "low"),
}
# Failure codes that mean the request itself was refused (400); any other failed
# job is an upstream error (502). Adapters use ``moderation_blocked`` for safety blocks.
REFUSAL_CODES = frozenset({
    "unsupported", "invalid_request", "moderation_blocked", "content_policy_violation",
    "bad_image_url", "invalid_reference",
})


def render_error(exc: MuxError) -> Response:
    # OpenAI answers a file that is not an image, or a wrong Content-Type, with 400.
    status = 400 if exc.status == 415 else exc.status
    body = {"error": {"message": exc.message, "type": exc.type, "param": exc.param,
                      "code": exc.code}}
    response = JSONResponse(body, status_code=status)
    if status in (502, 504):
        # The job already ran (or still runs): an SDK retry would only start another.
        response.headers["x-should-retry"] = "false"
    return _retry_after(response, exc)


@surface(render_error)
async def list_models(request: Request) -> Response:
    state: AppState = request.app.state.mux
    await state.auth.authenticate(request)
    return JSONResponse({"object": "list",
                         "data": [model_view(m) for m in state.settings.models.values()]})


@surface(render_error)
async def get_model(request: Request) -> Response:
    state: AppState = request.app.state.mux
    await state.auth.authenticate(request)
    model_id = request.path_params["model"]
    model = state.settings.models.get(model_id)
    if model is None:
        error = NotFound(f"The model '{model_id}' does not exist", param="model")
        error.code = "model_not_found"
        raise error
    return JSONResponse(model_view(model))


def model_view(model: ModelSettings) -> dict[str, Any]:
    # The config does not know when a model "was created"; 0 keeps the field an int.
    data: dict[str, Any] = {"id": model.id, "object": "model", "created": 0,
                            "owned_by": "muxproxy"}
    if model.description:
        data["description"] = model.description
    return data


@surface(render_error)
async def generate(request: Request) -> Response:
    state: AppState = request.app.state.mux
    key = await state.auth.authenticate(request)
    if media_type(request) != "application/json":
        raise InvalidRequest("Content-Type must be application/json")
    body = parse_json_object(await read_body(request, state.settings.limits.max_body_bytes))
    v.unknown_fields(body, GENERATE_FIELDS)
    submission, response_format = parse_submission(body, dict(body), state)
    return await run(request, state, key, submission, response_format)


@surface(render_error)
async def edit(request: Request) -> Response:
    state: AppState = request.app.state.mux
    limits = state.settings.limits
    key = await state.auth.authenticate(request)
    kind = media_type(request)
    if kind not in ("multipart/form-data", "application/json"):
        raise InvalidRequest("Content-Type must be multipart/form-data or application/json")
    raw = await read_body(request, limits.max_body_bytes)
    if kind == "application/json":
        body = parse_json_object(raw)
        v.unknown_fields(body, EDIT_FIELDS)
        ordered, mask_ref, mask_upload = _json_images(body, state)
        refs = [i for i in ordered if isinstance(i, ImageRef)]
        uploads = [i for i in ordered if not isinstance(i, ImageRef)]
        params = _without_data(body)
    else:
        form = await parse_form(raw, request.headers["content-type"], FormLimits(
            max_parts=limits.max_reference_images + 1 + len(EDIT_FIELDS),
            max_file_bytes=limits.max_image_bytes,
            max_field_bytes=limits.max_prompt_chars * 4 + 1024))
        body = dict(form.fields)
        for name in (*_IMAGE_PARTS, "mask"):
            if name in body:
                raise InvalidRequest(f"'{name}' must be a file part", param=name)
        v.unknown_fields(body, EDIT_FIELDS - {"images", "mask"})
        uploads, mask_upload = _form_images(form.files, state)
        refs, mask_ref = [], None
        ordered = list(uploads)
        params = {**body, **_describe_files(form.files)}
    if not refs and not uploads:
        raise InvalidRequest("'image' is required: send one or more image files",
                             param="image")
    if len(refs) + len(uploads) > limits.max_reference_images:
        raise InvalidRequest(f"at most {limits.max_reference_images} images", param="image")
    submission, response_format = parse_submission(
        body, params, state, images=ordered, mask_ref=mask_ref, mask_upload=mask_upload)
    return await run(request, state, key, submission, response_format)


def parse_submission(body: Mapping[str, Any], params: Mapping[str, Any], state: AppState, *,
                     images: Sequence[ImageRef | UploadedImage] = (),
                     mask_ref: ImageRef | None = None,
                     mask_upload: UploadedImage | None = None) -> tuple[Submission, str]:
    """The fields both endpoints share; returns the submission and response_format."""
    limits = state.settings.limits
    model = state.gateway.model_or_default(v.string(body, "model", max_len=200))
    response_format = _choice(body, "response_format", ("url", "b64_json")) or "url"
    stream = body.get("stream")
    if not (stream is None or stream is False or stream == "false"):
        raise InvalidRequest("streaming is not supported; omit 'stream'", param="stream")
    extra: dict[str, Any] = {}
    for name, allowed in CHOICES.items():
        if (value := _choice(body, name, allowed)) is not None:
            extra[name] = value
    if body.get("output_compression") is not None:
        extra["output_compression"] = v.integer(body, "output_compression", default=100,
                                                low=0, high=100)
    for name in ("user", "safety_identifier"):
        if (value := v.string(body, name, max_len=256)) is not None:
            extra[name] = value
    request = GenerationRequest(
        prompt=v.prompt(body, limits),
        n=v.integer(body, "n", default=1, low=1, high=limits.max_n),
        size=v.size(body),
        quality=v.quality(body),
        output_format=v.output_format(body),
        mask=mask_ref,
        extra=extra,
    )
    return Submission(model=model.id, request=request, client_params=params,
                      images=images, mask_upload=mask_upload), response_format


def _choice(body: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = v.string(body, name, max_len=32)
    if value is not None and value not in allowed:
        raise InvalidRequest(f"unsupported {name} {value!r}: use {' or '.join(allowed)}",
                             param=name)
    return value


def _form_images(files: Sequence[Part], state: AppState
                 ) -> tuple[list[UploadedImage], UploadedImage | None]:
    limits = state.settings.limits
    uploads = []
    mask = None
    for part in files:
        if part.name in _IMAGE_PARTS:
            uploads.append(v.image_bytes(part.data, part.name, limits))
        elif part.name == "mask":
            if mask is not None:
                raise InvalidRequest("send one 'mask' file", param="mask")
            mask = v.image_bytes(part.data, "mask", limits)
        else:
            raise InvalidRequest(f"unexpected file field '{part.name}': send images as "
                                 "'image' or 'image[]' and the mask as 'mask'", param=part.name)
    return uploads, mask


def _json_images(body: Mapping[str, Any], state: AppState) -> tuple[
        list[ImageRef | UploadedImage], ImageRef | None, UploadedImage | None]:
    """``images: [{"image_url"}]`` and ``mask: {"image_url"}``, as URLs or data URIs."""
    items = body.get("images")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise InvalidRequest("'images' must be an array of {\"image_url\": ...}",
                             param="images")
    ordered: list[ImageRef | UploadedImage] = []
    for item in items:
        ref, upload = _image_url(item, "images", state)
        ordered.extend(x for x in (ref, upload) if x is not None)
    mask_ref = mask_upload = None
    if body.get("mask") is not None:
        mask_ref, mask_upload = _image_url(body["mask"], "mask", state)
    return ordered, mask_ref, mask_upload


def _image_url(item: Any, name: str, state: AppState
               ) -> tuple[ImageRef | None, UploadedImage | None]:
    if isinstance(item, dict) and "file_id" in item:
        raise InvalidRequest("file_id references are not supported; send image_url",
                             param=name)
    # Nothing but the URL: other keys would be kept, unchecked, with the job.
    if not isinstance(item, dict) or set(item) != {"image_url"}:
        raise InvalidRequest(f"'{name}' entries must be {{\"image_url\": URL}}", param=name)
    url = v.http_url(item["image_url"], name, allow_data=True)
    if url.startswith("data:"):
        return None, v.decode_image(url, name, state.settings.limits)
    return ImageRef(url=url), None


def _without_data(body: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body for the job's record, data URIs replaced by a note."""

    def clean(item: Any) -> Any:
        url = item.get("image_url") if isinstance(item, dict) else None
        if isinstance(url, str) and url.startswith("data:"):
            return {**item, "image_url": f"<data URI, {len(url)} chars>"}
        return item

    params = dict(body)
    if isinstance(params.get("images"), list):
        params["images"] = [clean(item) for item in params["images"]]
    if params.get("mask") is not None:
        params["mask"] = clean(params["mask"])
    return params


def _describe_files(files: Sequence[Part]) -> dict[str, Any]:
    described: dict[str, Any] = {}
    for part in files:
        name = "image" if part.name in _IMAGE_PARTS else part.name
        note = f"<file {part.filename!r}, {len(part.data)} bytes>"
        if name == "mask":
            described[name] = note
        else:
            described.setdefault(name, []).append(note)
    return described


def wait_seconds(settings: Settings) -> float:
    """``surfaces.openai_wait_seconds``, or by default the job's whole life: its
    deadline, plus the time the scheduler may take to notice a deadline passed."""
    return settings.surfaces.openai_wait_seconds or \
        settings.jobs.deadline_seconds + settings.jobs.sweep_seconds + 1


async def run(request: Request, state: AppState, key: ApiKey, submission: Submission,
              response_format: str) -> Response:
    """Create the job, wait for it, and answer with its images or its failure."""
    watch = state.gateway.watch()
    try:
        job = await state.gateway.submit(key, SurfaceName.OPENAI, submission,
                                         before_start=watch,
                                         idempotency=idempotency_claim(request))
        return await answer(request, state, job, response_format, watch)
    finally:
        watch.close()


async def replay(request: Request, state: AppState, job: Job) -> Response:
    """A create call's retry (same Idempotency-Key): waits for the job the first
    call created, like the first call did, and answers with its result."""
    return await answer(request, state, job, await _response_format(request, state))


async def answer(request: Request, state: AppState, job: Job, response_format: str,
                 watch: EndWatch | None = None) -> Response:
    waiting = state.gateway.wait(job, wait_seconds(state.settings), watch=watch)
    try:
        ended = await unless_hung_up(request, waiting)
    except StillRunning as exc:
        response = render_error(exc)
    else:
        if ended is None:
            log.info("client disconnected while waiting; the job continues", job_id=job.id)
            return Response(status_code=499)
        if ended.state is JobState.FAILED:
            response = render_error(failure(ended))
        else:
            response = JSONResponse(await images_response(state, ended, response_format))
    response.headers[JOB_HEADER] = job.id
    return response


async def _response_format(request: Request, state: AppState) -> str:
    """The retried request's ``response_format`` (its body is the first call's)."""
    raw = await request.body()
    try:
        if media_type(request) == "multipart/form-data":
            limit = state.settings.limits.max_body_bytes
            form = await parse_form(raw, request.headers["content-type"], FormLimits(
                max_parts=1000, max_file_bytes=limit, max_field_bytes=limit))
            fields: Mapping[str, Any] = form.fields
        else:
            fields = parse_json_object(raw)
    except MuxError:
        fields = {}
    return "b64_json" if fields.get("response_format") == "b64_json" else "url"


def failure(job: Job) -> MuxError:
    code = job.fail_code or "upstream_error"
    message = job.fail_msg or "image generation failed"
    error: MuxError = InvalidRequest(message) if code in REFUSAL_CODES \
        else UpstreamFailed(message)
    error.code = code
    return error


async def images_response(state: AppState, job: Job, response_format: str) -> dict[str, Any]:
    assert job.result is not None
    result = job.result
    if response_format == "b64_json":
        items = [{"b64_json": base64.b64encode(blob).decode("ascii")}
                 for blob in await state.gateway.result_images(job)]
    else:
        items = [{"url": url} for url in state.gateway.result_links(job)]
    data: list[dict[str, Any]] = []
    for item in items:
        if result.revised_prompt is not None:
            item["revised_prompt"] = result.revised_prompt
        data.append(item)
    body: dict[str, Any] = {"created": (job.completed_at or job.created_at) // 1000,
                            "data": data, "usage": usage(job)}
    first = result.images[0]
    body["output_format"] = images.EXTENSIONS.get(first.content_type, "png")
    if first.width and first.height:
        body["size"] = f"{first.width}x{first.height}"
    # Echoed only in the values OpenAI's response type allows.
    if job.request.quality in ("low", "medium", "high"):
        body["quality"] = job.request.quality
    if job.request.extra.get("background") in ("transparent", "opaque"):
        body["background"] = job.request.extra["background"]
    return body


def usage(job: Job) -> dict[str, Any]:
    """Token counts in OpenAI's names (the gateway does not meter
    tokens: zeros), and the job's price in credits."""
    return {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
            "output_tokens": 0, "total_tokens": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "credits": job.credits}


routes = [
    Route("/v1/images/generations", generate, methods=["POST"]),
    Route("/v1/images/edits", edit, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
