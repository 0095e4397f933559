"""The OpenAI-compatible images API (docs/openai-api.md), for the
official SDKs pointed at ``base_url=<gateway>/v1``.

``POST /v1/images/*`` creates a job like any surface, then waits for it (bounded by
``surfaces.openai_wait_seconds``; by default the job's whole life) and answers as
OpenAI does, with OpenAI's defaults (``null`` is absent; b64_json for edits and GPT
Image ids); with ``stream: true`` it streams the job instead (openai_answers.py).
The job id leaves in the ``x-muxproxy-job-id`` header; a client that
hangs up or times out can poll it on the native task API, or retry with the first
call's Idempotency-Key to wait for the same job.
Errors: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy import images
from muxproxy import validation as v
from muxproxy.app_state import AppState
from muxproxy.errors import InvalidRequest, MuxError, NotFound, StillRunning
from muxproxy.forms import FormLimits, parse_form
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
from muxproxy.providers.sizes import nearest_ratio
from muxproxy.settings import ModelSettings, Settings
from muxproxy.store import ApiKey
from muxproxy.surfaces import SurfaceName
from muxproxy.surfaces.openai_answers import (
    EventStream,
    Reply,
    error_body,
    failure,
    images_response,
    job_events,
)
from muxproxy.surfaces.openai_inputs import (
    IMAGE_PARTS,
    describe_files,
    form_images,
    json_images,
    without_data,
)
from muxproxy.validation import UploadedImage

log = get_logger("muxproxy.openai")

JOB_HEADER = "x-muxproxy-job-id"
GENERATE_FIELDS = frozenset({
    "model", "prompt", "n", "size", "quality", "response_format", "style", "background",
    "output_format", "output_compression", "moderation", "user", "safety_identifier", "stream",
    "partial_images",
    # Gateway extensions, sent through the SDKs' ``extra_body``.
    "aspect_ratio", "resolution", "seed",
})
EDIT_FIELDS = GENERATE_FIELDS | {"input_fidelity", "images", "mask"}
# Passed to providers in ``GenerationRequest.extra`` under these names when sent.
CHOICES: Mapping[str, tuple[str, ...]] = {
    "style": ("vivid", "natural"), "background": ("transparent", "opaque", "auto"),
    "moderation": ("low", "auto"), "input_fidelity": ("high", "low"),
}
# An edit that names no size keeps its first image's shape: the nearest of the model's
# ``aspect_ratios``, else of these (providers map a ratio to a size they render).
EDIT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
# Model ids OpenAI answers with b64_json when no response_format is sent.
GPT_IMAGE_PREFIXES = ("gpt-image-", "chatgpt-image-")


def render_error(exc: MuxError) -> Response:
    # OpenAI answers a file that is not an image, or a wrong Content-Type, with 400.
    status = 400 if exc.status == 415 else exc.status
    response = JSONResponse(error_body(exc), status_code=status)
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
    # When the model was configured: its ``created`` setting, else the config
    # file's last write (settings_parse.load).
    data: dict[str, Any] = {"id": model.id, "object": "model", "created": model.created,
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
    submission, reply = parse_submission(present(body), dict(body), state)
    return await run(request, state, key, submission, reply)


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
        body = present(parse_json_object(raw))
        v.unknown_fields(body, EDIT_FIELDS)
        ordered, mask_ref, mask_upload = json_images(body, state)
        refs = [i for i in ordered if isinstance(i, ImageRef)]
        uploads = [i for i in ordered if not isinstance(i, ImageRef)]
        params = without_data(body)
    else:
        form = await parse_form(raw, request.headers["content-type"], FormLimits(
            max_parts=limits.max_reference_images + 1 + len(EDIT_FIELDS),
            max_file_bytes=limits.max_image_bytes,
            max_field_bytes=limits.max_prompt_chars * 4 + 1024))
        body = dict(form.fields)
        for name in (*IMAGE_PARTS, "mask"):
            if name in body:
                raise InvalidRequest(f"'{name}' must be a file part", param=name)
        v.unknown_fields(body, EDIT_FIELDS - {"images", "mask"})
        uploads, mask_upload = form_images(form.files, state)
        refs, mask_ref = [], None
        ordered = list(uploads)
        params = {**body, **describe_files(form.files)}
    if not refs and not uploads:
        raise InvalidRequest("'image' is required: send one or more image files",
                             param="image")
    if len(refs) + len(uploads) > limits.max_reference_images:
        raise InvalidRequest(f"at most {limits.max_reference_images} images", param="image")
    submission, reply = parse_submission(
        body, params, state, images=ordered, mask_ref=mask_ref, mask_upload=mask_upload)
    return await run(request, state, key, submission, reply)


def present(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields sent with a value: ``null`` means absent, as in OpenAI's API."""
    return {name: value for name, value in body.items() if value is not None}


def parse_submission(body: Mapping[str, Any], params: Mapping[str, Any], state: AppState, *,
                     images: Sequence[ImageRef | UploadedImage] = (),
                     mask_ref: ImageRef | None = None,
                     mask_upload: UploadedImage | None = None) -> tuple[Submission, Reply]:
    """The fields both endpoints share; returns the submission and how to answer."""
    limits = state.settings.limits
    model = state.gateway.model_or_default(v.string(body, "model", max_len=200))
    reply = reply_for(body, model, edit=bool(images))
    extra: dict[str, Any] = {}
    if reply.stream:
        extra["partial_images"] = reply.stream
    for name, allowed in CHOICES.items():
        if (value := _choice(body, name, allowed)) is not None:
            extra[name] = value
    if body.get("output_compression") is not None:
        extra["output_compression"] = v.integer(body, "output_compression", default=100,
                                                low=0, high=100)
    for name in ("user", "safety_identifier"):
        if (value := v.string(body, name, max_len=256)) is not None:
            extra[name] = value
    if body.get("seed") is not None:
        extra["seed"] = v.integer(body, "seed", default=0, low=0, high=2**32 - 1)
    size, aspect_ratio, resolution = v.size(body), v.aspect_ratio(body), v.resolution(body)
    if body.get("size") is None and aspect_ratio is None and resolution is None and \
            (aspect_ratio := _input_aspect(images, model)) is not None:
        extra["aspect_from_input"] = True
    request = GenerationRequest(
        prompt=v.prompt(body, limits),
        n=v.integer(body, "n", default=1, low=1, high=limits.max_n),
        size=size,
        aspect_ratio=aspect_ratio,
        resolution=resolution,
        quality=v.quality(body),
        output_format=v.output_format(body),
        mask=mask_ref,
        extra=extra,
    )
    return Submission(model=model.id, request=request, client_params=params,
                      images=images, mask_upload=mask_upload), reply


def _input_aspect(refs: Sequence[ImageRef | UploadedImage], model: ModelSettings
                  ) -> str | None:
    """The ratio nearest the first uploaded image's shape (a URL's is unknown yet)."""
    first = refs[0] if refs else None
    if not isinstance(first, UploadedImage):
        return None
    width, height = images.dimensions(first.data)
    if not width or not height:
        return None
    return nearest_ratio(width, height, model.aspect_ratios or EDIT_RATIOS)


def reply_for(body: Mapping[str, Any], model: ModelSettings, *, edit: bool) -> Reply:
    """``response_format`` (by default as OpenAI answers: ``b64_json`` for edits and
    GPT Image models, else the model's ``response_format`` setting), and
    ``stream`` with its ``partial_images``."""
    response_format = _choice(body, "response_format", ("url", "b64_json")) or \
        default_response_format(model, edit=edit)
    partials = v.integer(body, "partial_images", default=0, low=0, high=3)
    stream = body.get("stream", False)
    if stream in (True, "true"):
        return Reply(response_format, stream=partials, edit=edit)
    if stream not in (False, "false"):
        raise InvalidRequest("'stream' must be true or false", param="stream")
    return Reply(response_format, edit=edit)


def default_response_format(model: ModelSettings, *, edit: bool) -> str:
    if edit:
        return "b64_json"
    if model.response_format:
        return model.response_format
    name = model.id.rsplit("/", 1)[-1]
    return "b64_json" if name.startswith(GPT_IMAGE_PREFIXES) else "url"


def _choice(body: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = v.string(body, name, max_len=32)
    if value is not None and value not in allowed:
        raise InvalidRequest(f"unsupported {name} {value!r}: use {' or '.join(allowed)}",
                             param=name)
    return value


def wait_seconds(settings: Settings) -> float:
    """``surfaces.openai_wait_seconds``, or by default the job's whole life: its
    deadline, plus the time the scheduler may take to notice a deadline passed."""
    return settings.surfaces.openai_wait_seconds or \
        settings.jobs.deadline_seconds + settings.jobs.sweep_seconds + 1


async def run(request: Request, state: AppState, key: ApiKey, submission: Submission,
              reply: Reply) -> Response:
    """Create the job, then wait for it and answer with its images or its failure,
    or stream it."""
    watch = state.gateway.watch(partials=reply.stream is not None)
    try:
        job = await state.gateway.submit(key, SurfaceName.OPENAI, submission,
                                         before_start=watch,
                                         idempotency=idempotency_claim(request))
    except BaseException:
        watch.close()
        raise
    if reply.stream is not None:
        # The stream closes the watch when it ends (or the job's end drops it).
        return EventStream(job_events(
            state, job, reply,
            lambda: state.gateway.wait(job, wait_seconds(state.settings), watch=watch),
            watch.partials, watch.close), {JOB_HEADER: job.id})
    try:
        return await answer(request, state, job, reply.response_format, watch)
    finally:
        watch.close()


async def replay(request: Request, state: AppState, job: Job) -> Response:
    """A create call's retry (same Idempotency-Key): waits for the job the first
    call created, like the first call did, and answers with its result (streamed
    when the call streams: previews from now on, then the end)."""
    reply = await _reply(request, state, job)
    if reply.stream is None:
        return await answer(request, state, job, reply.response_format)
    events = state.gateway.events
    queue = events.listen(job.id)
    return EventStream(job_events(
        state, job, reply, lambda: state.gateway.wait(job, wait_seconds(state.settings)),
        queue, lambda: events.unlisten(job.id, queue)), {JOB_HEADER: job.id})


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


async def _reply(request: Request, state: AppState, job: Job) -> Reply:
    """How the retried request wants its answer (its body is the first call's)."""
    raw = await request.body()
    try:
        if media_type(request) == "multipart/form-data":
            limit = state.settings.limits.max_body_bytes
            form = await parse_form(raw, request.headers["content-type"], FormLimits(
                max_parts=1000, max_file_bytes=limit, max_field_bytes=limit))
            fields: Mapping[str, Any] = form.fields
        else:
            fields = present(parse_json_object(raw))
        model = state.settings.models.get(job.model)
        if model is not None:
            return reply_for(fields, model, edit=job.request.is_edit)
    except MuxError:
        pass
    return Reply("b64_json" if job.request.is_edit else "url", edit=job.request.is_edit)


routes = [
    Route("/v1/images/generations", generate, methods=["POST"]),
    Route("/v1/images/edits", edit, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
