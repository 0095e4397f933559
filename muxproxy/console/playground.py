"""Playground (a team's): pick a model and its options, write a prompt, add a
reference image if wanted, and watch the job run to its images. It submits through
the gateway like any surface, billed to the signed-in key."""

from __future__ import annotations

from starlette.responses import Response

from muxproxy import validation as v
from muxproxy.console.pages import Ctx, page
from muxproxy.errors import InvalidRequest
from muxproxy.forms import FormLimits
from muxproxy.gateway import Submission
from muxproxy.generation import GenerationRequest
from muxproxy.settings import ModelSettings
from muxproxy.surfaces import SurfaceName
from muxproxy.validation import UploadedImage

FIELDS = frozenset({"csrf", "model", "prompt", "aspect_ratio", "resolution", "callback_url"})
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")
RESOLUTIONS = ("1k", "2k", "4k")


def _models(ctx: Ctx) -> list[ModelSettings]:
    key = ctx.viewer.key if ctx.viewer is not None else None
    return [m for m in ctx.state.settings.models.values() if key is None or key.may_use(m.id)]


@page()
async def playground(ctx: Ctx) -> Response:
    assert ctx.viewer is not None
    job = None
    job_id = ctx.request.query_params.get("job")
    if job_id and ctx.viewer.key is not None:
        job = await ctx.state.gateway.job_for(ctx.viewer.key, job_id)
    models = _models(ctx)
    ratios = sorted({r for m in models for r in m.aspect_ratios}) or list(ASPECT_RATIOS)
    sizes = sorted({r for m in models for r in m.resolutions}) or list(RESOLUTIONS)
    return ctx.render("playground.html", models=models, ratios=ratios, sizes=sizes, job=job,
                      can_run=ctx.viewer.key is not None)


@page()
async def run(ctx: Ctx) -> Response:
    assert ctx.viewer is not None
    limits = ctx.state.settings.limits
    form = await ctx.form(FormLimits(max_parts=len(FIELDS) + 1,
                                     max_file_bytes=limits.max_image_bytes,
                                     max_field_bytes=limits.max_prompt_chars * 4 + 1024))
    key = ctx.viewer.key
    if key is None:
        raise InvalidRequest("the playground runs jobs on an API key: sign in with one")
    body = {name: value for name, value in form.fields.items() if value.strip()}
    v.unknown_fields(body, FIELDS)
    model = ctx.state.gateway.model_or_default(v.string(body, "model", max_len=200))
    # A browser sends an unused file input as an empty part without a file name.
    uploads: list[UploadedImage] = [v.image_bytes(part.data, part.filename or part.name, limits)
                                    for part in form.files if part.data or part.filename]
    request = GenerationRequest(
        prompt=v.prompt(body, limits), resolution=v.resolution(body),
        aspect_ratio=v.aspect_ratio(body) or (None if uploads else "1:1"))
    callback = body.get("callback_url")
    params = {k: val for k, val in body.items() if k != "csrf"}
    if uploads:
        params["reference_image"] = f"<{uploads[0].content_type}, {len(uploads[0].data)} bytes>"
    submission = Submission(
        model=model.id, request=request, client_params=params, uploads=uploads,
        callback_url=v.http_url(callback, "callback_url") if callback is not None else None)
    job = await ctx.state.gateway.submit(key, SurfaceName.CONSOLE, submission)
    return ctx.redirect("/playground", job=job.id)
