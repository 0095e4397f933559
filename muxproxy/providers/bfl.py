"""Black Forest Labs (FLUX) API: async, submit then poll the returned ``polling_url``.

``POST {base_url}/v1/{model}`` answers ``{"id", "polling_url"}``; the polling URL
may be on another (regional) host and is used exactly as given, never rebuilt.
BFL makes one image per request, so ``n`` images are ``n`` submits: all their ids
and polling URLs are kept in the job's upstream state, finished ones are not
polled again, and the job finishes when every task is Ready (any failed task
fails the job). With a ``seed``, image ``i`` gets ``seed + i``. BFL has no cancel
endpoint for generation tasks, so :meth:`cancel` does nothing.

How size is sent depends on the model family (see ``FAMILIES``): FLUX.2 takes
``width``/``height`` in multiples of 16 (up to 4 MP), FLUX1.1 [pro] and older in
multiples of 32 within 256-1440, Kontext and 1.1 [pro] Ultra take
``aspect_ratio`` (a ``size`` becomes its reduced ratio; ``resolution`` only
scales pixel sizes). Nothing is sent when the request names no size, so the
model's default (or its input image's) applies. Reference images go in
``input_image``, ``input_image_2``, ... (a URL as given, bytes as base64) or, for
FLUX1.1, the single ``image_prompt`` (always base64). Masks are not supported.

Body fields: translated request, then ``extra`` keys from ``PASSTHROUGH`` (e.g.
``seed``, ``safety_tolerance``), then route ``params`` verbatim, which win.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from muxproxy import images
from muxproxy.generation import GenerationRequest
from muxproxy.providers.base import (
    Call,
    Finished,
    Handle,
    ImageLink,
    PollOutcome,
    Provider,
    Reference,
    Running,
    SubmitOutcome,
    Submitted,
    Unsupported,
    UpstreamError,
)
from muxproxy.providers.fanout import all_or_nothing
from muxproxy.providers.sizes import PixelBox, fit, ratio_size, reduced_ratio
from muxproxy.providers.wire import Answer, message_at, read_answer, read_error

PASSTHROUGH = frozenset({"seed", "safety_tolerance", "output_format", "prompt_upsampling",
                         "raw", "guidance", "steps", "image_prompt_strength"})
# FLUX.2: multiples of 16, up to 4 MP.
_FLUX2_PIXELS = PixelBox(multiple=16, min_side=64, max_side=4096, max_area=4 * 1024 * 1024)


@dataclass(frozen=True)
class Family:
    """How one group of BFL models takes its size and reference images."""

    by_ratio: bool
    image_fields: tuple[str, ...]
    pixels: PixelBox = _FLUX2_PIXELS
    image_urls: bool = True  # whether references may be sent as URLs


def _inputs(count: int) -> tuple[str, ...]:
    return ("input_image", *(f"input_image_{i}" for i in range(2, count + 1)))


FLUX2 = Family(by_ratio=False, image_fields=_inputs(8))
KONTEXT = Family(by_ratio=True, image_fields=_inputs(4))
ULTRA = Family(by_ratio=True, image_fields=("image_prompt",), image_urls=False)
FLUX1 = Family(by_ratio=False, image_fields=("image_prompt",),
               pixels=PixelBox(multiple=32, min_side=256, max_side=1440,
                               max_area=1440 * 1440), image_urls=False)

# By model name prefix, first match wins; unknown models are taken as FLUX.2.
FAMILIES: tuple[tuple[str, Family], ...] = (
    ("flux-2-", FLUX2),
    ("flux-kontext-", KONTEXT),
    ("flux-pro-1.1-ultra", ULTRA),
    ("flux-pro-1.1", FLUX1),
    ("flux-pro", FLUX1),
    ("flux-dev", FLUX1),
)


def family_for(model: str) -> Family:
    return next((family for prefix, family in FAMILIES if model.startswith(prefix)), FLUX2)


def pixel_size(request: GenerationRequest, family: Family) -> tuple[int, int] | None:
    """``width, height`` fitted to the family's limits, or None when none was asked."""
    ratio = request.aspect_ratio if request.aspect_ratio != "auto" else None
    if request.size is None and ratio is None and request.resolution is None:
        return None
    if request.size is not None:
        return fit(*request.size, family.pixels)
    # Not images.pixel_size: it clamps each side to 4096 on its own, which bends
    # wide ratios at 4k; here the ratio is kept and the whole is scaled to fit.
    r = images.parse_ratio(ratio) if ratio else None
    return fit(*ratio_size(r or 1.0, request.resolution), family.pixels)


def ratio_of(request: GenerationRequest) -> str | None:
    if request.aspect_ratio and request.aspect_ratio != "auto":
        return request.aspect_ratio
    if request.size is not None:
        return reduced_ratio(*request.size)
    return None


class BflProvider(Provider):
    kind = "bfl"
    honours = frozenset({"seed"})
    is_async = True
    # ``{"detail": "..."}`` or 422 ``{"detail": [{"loc", "msg", "type"}]}``.
    error_paths = ("detail",)

    def check(self, request: GenerationRequest, upstream_model: str,
              params: Mapping[str, Any]) -> None:
        family = family_for(upstream_model)
        if request.mask is not None:
            raise Unsupported(f"{upstream_model} takes no mask", param="mask")
        if len(request.images) > len(family.image_fields):
            raise Unsupported(f"{upstream_model} takes at most {len(family.image_fields)} "
                              f"reference image{'s' if len(family.image_fields) > 1 else ''}, "
                              f"got {len(request.images)}", param="image_urls")
        if request.output_format not in (None, "png", "jpeg"):
            raise Unsupported(f"{upstream_model} makes png or jpeg images, not "
                              f"{request.output_format!r}", param="output_format")

    async def submit(self, call: Call) -> SubmitOutcome:
        self.check(call.request, call.upstream_model, call.params)
        body = await self._body(call)
        url = f"{self.base_url}/v1/{call.upstream_model}"
        seed = body.get("seed")
        bodies = [body if i == 0 or not isinstance(seed, int) else {**body, "seed": seed + i}
                  for i in range(call.request.n)]
        tasks = await all_or_nothing([self._submit_one(url, b) for b in bodies])
        return Submitted(upstream_id=",".join(task["id"] for task in tasks),
                         state={"tasks": tasks})

    async def _body(self, call: Call) -> dict[str, Any]:
        request, family = call.request, family_for(call.upstream_model)
        body: dict[str, Any] = {"prompt": request.prompt}
        if family.by_ratio:
            if (ratio := ratio_of(request)) is not None:
                body["aspect_ratio"] = ratio
        elif (size := pixel_size(request, family)) is not None:
            body["width"], body["height"] = size
        for name, ref in zip(family.image_fields, call.images, strict=False):
            body[name] = await self._image(ref, urls=family.image_urls)
        if request.output_format is not None:
            body["output_format"] = request.output_format
        body.update({k: v for k, v in request.extra.items() if k in PASSTHROUGH})
        body.update(call.params)
        return body

    async def _image(self, ref: Reference, *, urls: bool) -> str:
        if urls and ref.url is not None and ref.data is None:
            return ref.url
        data, _ = await self.reference_bytes(ref)
        return base64.b64encode(data).decode("ascii")

    async def _submit_one(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        data = await self.call_json("POST", url, json=body)
        task_id = data.get("id") if isinstance(data, dict) else None
        polling_url = data.get("polling_url") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not isinstance(polling_url, str):
            raise UpstreamError(f"{self.name}: BFL accepted the task without an id and "
                                "polling_url", transient=True)
        return {"id": task_id, "polling_url": polling_url}

    async def poll(self, handle: Handle) -> PollOutcome:
        tasks = [dict(task) for task in handle.state["tasks"]]
        waiting = [task for task in tasks if "sample" not in task]
        outcomes = await asyncio.gather(*(self._poll_one(task) for task in waiting),
                                        return_exceptions=True)
        transient: UpstreamError | None = None
        progressed = False
        for task, outcome in zip(waiting, outcomes, strict=True):
            if isinstance(outcome, UpstreamError) and outcome.transient:
                transient = transient or outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            elif outcome is not None:
                task.update(outcome)
                progressed = True
        if all("sample" in task for task in tasks):
            prompt = tasks[0].get("prompt")
            return Finished(images=tuple(ImageLink(task["sample"]) for task in tasks),
                            revised_prompt=prompt if isinstance(prompt, str) else None)
        if transient is not None and not progressed:
            raise transient
        return Running(state={"tasks": tasks} if progressed else None)

    async def _poll_one(self, task: Mapping[str, Any]) -> dict[str, Any] | None:
        """The task's result once Ready, None while it is still pending."""
        async with self.call("GET", task["polling_url"]) as response:
            answer = await read_answer(response, self.settings.max_response_bytes)
            body = answer.json
            # A terminal status is believed whatever the HTTP status says.
            status = body.get("status") if isinstance(body, dict) else None
            if response.status >= 300 and status not in _FAILURES:
                raise self._error(response, answer)
            if not isinstance(status, str):
                raise UpstreamError(f"{self.name}: unexpected polling response (HTTP "
                                    f"{response.status})", transient=True)
        assert isinstance(body, dict)
        return self._outcome(task["id"], status, body)

    def _outcome(self, task_id: str, status: str, body: Mapping[str, Any]
                 ) -> dict[str, Any] | None:
        if status == "Ready":
            result = body.get("result")
            sample = result.get("sample") if isinstance(result, dict) else None
            if not isinstance(sample, str):
                raise UpstreamError(f"{self.name}: task {task_id} is Ready without an image",
                                    transient=False, code="no_image")
            out = {"sample": sample}
            if isinstance(result, dict) and isinstance(result.get("prompt"), str):
                out["prompt"] = result["prompt"]
            return out
        if status in _FAILURES:
            why, code = _FAILURES[status]
            raise UpstreamError(f"{self.name}: {why}{_details(body.get('details'))} "
                                f"(status {status!r}, task {task_id})", transient=False,
                                code=code)
        return None  # Pending, or a status BFL added since: keep polling

    async def cancel(self, handle: Handle) -> None:
        """BFL offers no way to cancel a generation task; it finishes and is billed."""

    async def upstream_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        return self._error(response, await read_error(response))

    def _error(self, response: aiohttp.ClientResponse, answer: Answer) -> UpstreamError:
        message = message_at(answer.json, self.error_paths)
        if message is None:
            message = f"HTTP {response.status}"
            if answer.snippet:
                message += f": {answer.snippet}"
        return self.error_for(response, message, code=_CODES.get(response.status))


_FAILURES: Mapping[str, tuple[str, str]] = {
    "Error": ("BFL failed to generate the image", "generation_failed"),
    "Failed": ("BFL failed to generate the image", "generation_failed"),
    "Request Moderated": ("BFL moderation rejected the request (prompt or input image)",
                          "content_moderated"),
    "Content Moderated": ("BFL moderation blocked the generated image", "content_moderated"),
    "Task not found": ("BFL does not know this task (expired or never created)",
                       "task_not_found"),
}
_CODES: Mapping[int, str] = {401: "upstream_auth", 403: "upstream_auth",
                             402: "upstream_credits", 422: "invalid_request"}


def _details(details: Any) -> str:
    if isinstance(details, dict):
        reasons = details.get("Moderation Reasons")
        if isinstance(reasons, list) and reasons:
            return f": {', '.join(str(r) for r in reasons)}"
        text = "; ".join(f"{k}: {v}" for k, v in details.items() if v)
        return f": {text[:300]}" if text else ""
    if isinstance(details, str) and details:
        return f": {details[:300]}"
    return ""
