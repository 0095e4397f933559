"""What the MCP tools and resources do, over the service layer (``Gateway``) for one
API key. Arguments are checked by the native task API's own parser, so a tool call
is refused for exactly what a native request would be, with the same message; every
refusal becomes a tool error (``is_error``) carrying that message."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp import types

from muxproxy import validation as v
from muxproxy.app_state import AppState
from muxproxy.errors import InvalidRequest, MuxError, NotFound, StillRunning
from muxproxy.gateway import Submission
from muxproxy.generation import ImageRef
from muxproxy.keyadmin import KeyAdmin
from muxproxy.logs import get_logger
from muxproxy.pipeline.jobs import Job, JobState, evolve
from muxproxy.previews import preview
from muxproxy.store import ApiKey
from muxproxy.surfaces import SurfaceName
from muxproxy.surfaces.mcp_tools import PREVIEW_MAX_SIDE, parse_resource_uri, resource_uri
from muxproxy.surfaces.native import parse_submission
from muxproxy.validation import UploadedImage

log = get_logger("muxproxy.mcp")
# (progress, total, message) -> sent to the client as a progress notification.
Progress = Callable[[float, float | None, str | None], Awaitable[None]]
# How often a waiting call looks at its job's state, for progress notifications.
POLL_SECONDS = 1.0
_OPTIONS = ("model", "size", "aspect_ratio", "resolution", "quality", "n")
_STAGES = {JobState.PENDING: 1, JobState.PROCESSING: 2}


def tool_error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def error_text(exc: MuxError) -> str:
    text = exc.message
    if exc.param:
        text += f" (argument: {exc.param})"
    if exc.retry_after is not None:
        text += f"; retry after {math.ceil(exc.retry_after)} s"
    return text


class McpCalls:
    """The tools of one call's API key."""

    def __init__(self, state: AppState, key: ApiKey) -> None:
        self.state = state
        self.gateway = state.gateway
        self.key = key

    async def call(self, name: str, args: Mapping[str, Any],
                   progress: Progress) -> types.CallToolResult:
        """A tool's result; a refusal or a failed job is a tool error, never a trace."""
        try:
            if name == "generate_image":
                return await self._generate(args, progress, edit=False)
            if name == "edit_image":
                return await self._generate(args, progress, edit=True)
            if name == "get_generation":
                _known(args, ("id",))
                return await self._render(await self.gateway.job_for(self.key, _id(args)))
            if name == "list_models":
                _known(args, ())
                return self._models()
            if name == "get_balance":
                _known(args, ())
                return await self._balance()
            return tool_error(f"unknown tool {name!r}")
        except MuxError as exc:
            return tool_error(error_text(exc))
        except Exception:
            log.exception("MCP tool failed", tool=name)
            return tool_error("internal error in the gateway; try again later")

    async def _generate(self, args: Mapping[str, Any], progress: Progress, *,
                        edit: bool) -> types.CallToolResult:
        _known(args, ("prompt", *_OPTIONS, *(("images", "mask") if edit else ())))
        body = {name: args[name] for name in ("prompt", *_OPTIONS) if args.get(name) is not None}
        body["model"] = self.gateway.model_or_default(body.get("model")).id
        submission = parse_submission(body, self.state)
        if edit:
            submission = await self._with_references(submission, args)
        job = await self.gateway.submit(self.key, SurfaceName.MCP, submission)
        job = await self._follow(job, progress)
        return await self._render(job)

    async def _with_references(self, submission: Submission,
                               args: Mapping[str, Any]) -> Submission:
        images = args.get("images")
        if not isinstance(images, list) or not images:
            raise InvalidRequest("'images' must be a non-empty array of references",
                                 param="images")
        limit = self.state.settings.limits.max_reference_images
        if len(images) > limit:
            raise InvalidRequest(f"at most {limit} reference images", param="images")
        refs = [await self._reference(item, "images") for item in images]
        mask_ref: ImageRef | None = None
        mask_upload: UploadedImage | None = None
        if args.get("mask") is not None:
            mask = await self._reference(args["mask"], "mask")
            mask_ref, mask_upload = (mask, None) if isinstance(mask, ImageRef) else (None, mask)
        params = {**submission.client_params, "images": [_recorded(item) for item in images]}
        if args.get("mask") is not None:
            params["mask"] = _recorded(args["mask"])
        return evolve(submission, images=refs, mask_upload=mask_upload, client_params=params,
                      request=evolve(submission.request, mask=mask_ref))

    async def _reference(self, item: Any, name: str) -> ImageRef | UploadedImage:
        limits = self.state.settings.limits
        if isinstance(item, str) and item.startswith(("http://", "https://")):
            return ImageRef(url=v.http_url(item, name))
        if isinstance(item, str) and item.startswith("muxproxy:"):
            found = parse_resource_uri(item)
            if found is None:
                raise InvalidRequest(f"{item!r} is not a muxproxy://generations/{{id}}/{{index}} "
                                     "URI", param=name)
            job = await self.gateway.job_for(self.key, found[0])
            data = await self._image(job, found[1], item)
            return v.image_bytes(data, name, limits)
        return v.decode_image(item, name, limits)

    async def _image(self, job: Job, index: int, uri: str) -> bytes:
        if job.state is not JobState.COMPLETED:
            raise InvalidRequest(f"generation {job.id} is {job.state.value}, it has no images "
                                 "yet", param="images")
        images = await self.gateway.result_images(job)
        if index >= len(images):
            raise NotFound(f"{uri}: generation {job.id} has {len(images)} image(s)")
        return images[index]

    async def _follow(self, job: Job, progress: Progress) -> Job:
        """The job once ended, or as it stands after ``surfaces.mcp_wait_seconds`` (or
        when the gateway stops), telling the client each state it passes through."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.state.settings.surfaces.mcp_wait_seconds
        stage, ticks = 0, 0
        while True:
            elapsed = loop.time() - started
            now_stage = _STAGES.get(job.state, 3)
            ticks = 0 if now_stage != stage else ticks + 1
            stage = now_stage
            # Strictly increasing, as the spec wants: a tick adds less than a stage.
            await progress(stage + ticks / (ticks + 1), 3,
                           f"{job.state.value} on {job.served_by}, {elapsed:.1f} s")
            remaining = deadline - loop.time()
            if job.is_terminal or remaining <= 0:
                return job
            try:
                # Ended: told once more, then returned by the check above.
                job = await self.gateway.wait(job, min(POLL_SECONDS, remaining))
                continue
            except StillRunning as exc:
                if exc.stopping:
                    return job
            job = await self.gateway.job_for(self.key, job.id)

    async def _render(self, job: Job) -> types.CallToolResult:
        if job.state is JobState.FAILED:
            return tool_error(f"generation {job.id} failed ({job.fail_code}): {job.fail_msg}")
        facts: dict[str, Any] = {"id": job.id, "state": job.state.value, "model": job.model,
                                 "provider": job.served_by}
        if job.state is not JobState.COMPLETED:
            text = (f"Generation {job.id} is still {job.state.value} on {job.served_by}. "
                    f"Call get_generation with id {job.id!r} in a little while to get its "
                    "images.")
            return types.CallToolResult(content=[types.TextContent(text=text)],
                                        structured_content=facts)
        links = await self.gateway.result_links(job)
        datas = await self.gateway.result_images(job)
        lines = [f"Generation {job.id} completed with {len(datas)} image(s) by "
                 f"{job.served_by}. The images shown are previews, scaled down to fit "
                 f"{PREVIEW_MAX_SIDE}x{PREVIEW_MAX_SIDE} so MCP clients accept them; the "
                 "links give each full-size image (valid "
                 f"{self.state.settings.storage.url_ttl_seconds} s, call get_generation for "
                 "fresh ones)."]
        blocks: list[types.ContentBlock] = []
        facts["images"] = []
        for index, (data, link) in enumerate(zip(datas, links, strict=True)):
            small = await asyncio.to_thread(preview, data, PREVIEW_MAX_SIDE)
            uri = resource_uri(job.id, index)
            size = small.scaled_from or (small.width, small.height)
            scaled = (f"preview {small.width}x{small.height} scaled down from "
                      f"{size[0]}x{size[1]}" if small.scaled_from else
                      f"{size[0]}x{size[1]}, previewed at full size")
            lines.append(f"Image {index + 1}: {scaled}. Full size: {link} Resource: {uri}")
            blocks.append(types.ImageContent(data=base64.b64encode(small.data).decode(),
                                             mime_type=small.content_type))
            blocks.append(types.ResourceLink(name=f"{job.id}-{index}", uri=uri,
                                             mime_type=job.result.images[index].content_type
                                             if job.result else None))
            facts["images"].append({"index": index, "url": link, "resource": uri,
                                    "width": size[0], "height": size[1]})
        return types.CallToolResult(content=[types.TextContent(text="\n".join(lines)), *blocks],
                                    structured_content=facts)

    def _models(self) -> types.CallToolResult:
        usable = [m for m in self.state.settings.models.values() if self.key.may_use(m.id)]
        models = [{"id": m.id, "description": m.description,
                   "resolutions": list(m.resolutions), "aspect_ratios": list(m.aspect_ratios),
                   "credits": m.credits, "default_quality": m.default_quality or None}
                  for m in usable]
        lines = [f"- {m.id}: {m.description or 'no description'}; credits per image: "
                 f"{json.dumps(m.credits)}"
                 + (f"; resolutions: {', '.join(m.resolutions)}" if m.resolutions else "")
                 + (f"; aspect ratios: {', '.join(m.aspect_ratios)}" if m.aspect_ratios else "")
                 for m in usable]
        return types.CallToolResult(
            content=[types.TextContent(text="\n".join(lines) or "no models for this key")],
            structured_content={"models": models})

    async def _balance(self) -> types.CallToolResult:
        admin = KeyAdmin(self.state.store, self.state.clock, self.state.auth.forget)
        key = await admin.by_id(self.key.id)
        unlimited = key.limits.unlimited
        text = ("This key is unlimited: it is never refused for its balance "
                f"(balance {key.balance} credits)." if unlimited else
                f"Balance: {key.balance} credits.")
        return types.CallToolResult(content=[types.TextContent(text=text)],
                                    structured_content={"balance": key.balance,
                                                        "unlimited": unlimited})

    async def read(self, uri: str) -> types.ReadResourceResult:
        """A generation's full-size image. Raises MuxError (the caller maps it)."""
        found = parse_resource_uri(uri)
        if found is None:
            raise NotFound(f"no resource {uri}")
        job = await self.gateway.job_for(self.key, found[0])
        data = await self._image(job, found[1], uri)
        content_type = job.result.images[found[1]].content_type if job.result else "image/png"
        return types.ReadResourceResult(contents=[types.BlobResourceContents(
            uri=uri, mime_type=content_type, blob=base64.b64encode(data).decode())])

    async def resources(self) -> types.ListResourcesResult:
        """The images of the key's latest completed generations."""
        jobs = await self.gateway.list_jobs(self.key, limit=20)
        return types.ListResourcesResult(resources=[
            types.Resource(name=f"{job.id}-{index}", uri=resource_uri(job.id, index),
                           mime_type=image.content_type,
                           description=f"image {index + 1} of generation {job.id} "
                                       f"({job.model})")
            for job in jobs if job.state is JobState.COMPLETED and job.result
            for index, image in enumerate(job.result.images)])


def _known(args: Mapping[str, Any], names: tuple[str, ...]) -> None:
    unknown = sorted(set(args) - set(names))
    if unknown:
        allowed = ", ".join(names) or "none"
        raise InvalidRequest(f"unknown argument(s): {', '.join(unknown)} (allowed: {allowed})",
                             param=unknown[0])


def _recorded(reference: Any) -> Any:
    """A reference as the job records it: base64 never goes into the table."""
    if isinstance(reference, str) and reference.startswith(("http://", "https://",
                                                            "muxproxy:")):
        return reference
    return f"<base64 image, {len(reference)} chars>" if isinstance(reference, str) else "?"


def _id(args: Mapping[str, Any]) -> str:
    value = args.get("id")
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'id' must be a generation id", param="id")
    return value
