"""fal.ai queue (async).

Submit ``POST {base_url}/{app}`` with the model input; fal answers with a request id
and the status, response and cancel URLs. Those URLs drop the app's sub-path
(``fal-ai/flux/dev`` polls ``/fal-ai/flux/requests/{id}/status``), so they are kept on
the job and used as given. ``COMPLETED`` with an ``error`` is a failed generation;
otherwise the response URL holds the output.

The input dialect follows the app path (the route's upstream model):

* the app alias starts with ``flux`` (``fal-ai/flux/dev``, ``fal-ai/flux-pro/v1.1``):
  ``image_size`` (a named preset for a preset ratio at 1K, else ``{width, height}``),
  ``num_images``, ``output_format``; one reference image, as ``image_url``, and only
  for ``.../image-to-image`` apps.
* any other app (``fal-ai/nano-banana``...): ``aspect_ratio`` (a ``size`` becomes the
  nearest ratio), ``num_images``, ``output_format``, references as ``image_urls``
  (bytes as ``data:`` URIs, never multipart). ``nano-banana*`` apps switch to their
  ``/edit`` endpoint when the request carries reference images. Apps whose alias
  starts with ``nano-banana-2`` or ends with ``-pro`` take ``resolution``
  (``1K|2K|4K``); the others make 1K images only.

Route ``params`` are merged into the input last: they override or add fields
(``seed``, ``safety_tolerance``, ``sync_mode``...). No fal app here takes a mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from muxproxy import images
from muxproxy.generation import GenerationRequest
from muxproxy.pricing import resolution_of
from muxproxy.providers.base import (
    Call,
    Finished,
    Handle,
    ImageLink,
    PollOutcome,
    Provider,
    Running,
    SubmitOutcome,
    Submitted,
    Unsupported,
    UpstreamError,
    ok,
)
from muxproxy.providers.payloads import as_dict, reference_url, unexpected
from muxproxy.providers.sizes import nearest_ratio

RUNNING = frozenset({"IN_QUEUE", "IN_PROGRESS"})
FLUX_PRESETS: Mapping[str, str] = {
    "1:1": "square_hd", "4:3": "landscape_4_3", "16:9": "landscape_16_9",
    "3:4": "portrait_4_3", "9:16": "portrait_16_9",
}
BANANA_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16")
URL_KEYS = ("status_url", "response_url", "cancel_url")


@dataclass(frozen=True)
class App:
    """A fal app path, ``owner/alias[/path]``, split the way fal's queue routes it."""

    owner: str
    alias: str
    path: str = ""

    @classmethod
    def parse(cls, model: str) -> App:
        owner, _, rest = model.strip("/").partition("/")
        alias, _, path = rest.partition("/")
        if not owner or not alias:
            raise Unsupported(f"fal app {model!r} is not owner/alias[/path]", param="model")
        return cls(owner, alias, path)

    @property
    def id(self) -> str:
        return "/".join(p for p in (self.owner, self.alias, self.path) if p)

    @property
    def root(self) -> str:
        """Where the queue keeps the app's requests: the path without its sub-path."""
        return f"{self.owner}/{self.alias}"

    @property
    def is_flux(self) -> bool:
        return self.alias.startswith("flux")

    @property
    def is_edit(self) -> bool:
        return self.path == "edit" or self.path.endswith("/edit")

    @property
    def takes_resolution(self) -> bool:
        return self.alias.startswith("nano-banana-2") or self.alias.endswith("-pro")


@dataclass(frozen=True)
class Plan:
    """Where a request goes and its input, short of the reference images."""

    app: App
    body: dict[str, Any]
    image_field: str | None


class FalProvider(Provider):
    kind = "fal"
    honours = frozenset({"seed"})
    is_async = True
    # ``{"detail": "..."}``, or on 422 a list of ``{loc, msg, type}``.
    error_paths = ("detail",)

    def check(self, request: GenerationRequest, upstream_model: str,
              params: Mapping[str, Any]) -> None:
        plan(request, upstream_model)

    async def submit(self, call: Call) -> SubmitOutcome:
        target = plan(call.request, call.upstream_model)
        body = dict(target.body)
        if call.images:
            assert target.image_field is not None
            urls = [await reference_url(self, ref) for ref in call.images]
            body[target.image_field] = urls[0] if target.image_field == "image_url" else urls
        body.update(call.params)
        data = as_dict(await self.call_json("POST", f"{self.base_url}/{target.app.id}",
                                            json=body))
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise unexpected(self, "no request_id")
        fallback = self._fallback_urls(target.app, request_id)
        state = {key: data[key] if isinstance(data.get(key), str) else fallback[key]
                 for key in URL_KEYS}
        return Submitted(upstream_id=request_id, state=state)

    async def poll(self, handle: Handle) -> PollOutcome:
        urls = self._urls(handle)
        # While queued fal may answer 202 rather than 200: any 2xx carries a status.
        status = as_dict(await self.call_json("GET", urls["status_url"]))
        state = status.get("status")
        if state in RUNNING:
            return Running()
        if state != "COMPLETED":
            raise unexpected(self, f"status {state!r}")
        error = status.get("error")
        if error:
            error_type = status.get("error_type")
            raise UpstreamError(f"{self.name}: {error}", transient=False,
                                code=error_type if isinstance(error_type, str)
                                else "generation_failed")
        return self._finished(as_dict(await self.call_json("GET", urls["response_url"])))

    async def cancel(self, handle: Handle) -> None:
        async with self.call("PUT", self._urls(handle)["cancel_url"]) as response:
            # 400 means the request already finished: nothing left to stop.
            if not ok(response) and response.status != 400:
                raise await self.upstream_error(response)

    def _finished(self, result: dict[str, Any]) -> Finished:
        raw = result.get("images")
        if not isinstance(raw, list):
            raw = [result["image"]] if isinstance(result.get("image"), dict) else []
        flags = result.get("has_nsfw_concepts")
        flagged = [bool(f) for f in flags] if isinstance(flags, list) else []
        links = tuple(ImageLink(item["url"]) for i, item in enumerate(raw)
                      if isinstance(item, dict) and isinstance(item.get("url"), str)
                      and not (i < len(flagged) and flagged[i]))
        description = result.get("description")
        description = description if isinstance(description, str) and description else None
        if not links:
            reason = ("every image was flagged by the safety checker" if any(flagged)
                      else "the result holds no image")
            raise UpstreamError(f"{self.name}: {reason}" +
                                (f": {description}" if description else ""),
                                transient=False,
                                code="content_filtered" if any(flagged) else "no_image")
        return Finished(images=links, revised_prompt=description)

    def _fallback_urls(self, app: App, request_id: str) -> dict[str, str]:
        base = f"{self.base_url}/{app.root}/requests/{request_id}"
        return {"status_url": f"{base}/status", "response_url": base,
                "cancel_url": f"{base}/cancel"}

    def _urls(self, handle: Handle) -> dict[str, str]:
        fallback = self._fallback_urls(App.parse(handle.upstream_model), handle.upstream_id)
        return {key: value if isinstance(value := handle.state.get(key), str)
                else fallback[key] for key in URL_KEYS}


def plan(request: GenerationRequest, upstream_model: str) -> Plan:
    """The app and input for a request; raises :class:`Unsupported` for what it cannot take."""
    app = App.parse(upstream_model)
    if request.mask is not None:
        raise Unsupported(f"fal app {app.id} does not take a mask", param="mask")
    body: dict[str, Any] = {"prompt": request.prompt, "num_images": request.n}
    if request.output_format:
        body["output_format"] = request.output_format
    seed = request.extra.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        body["seed"] = seed
    if app.is_flux:
        field = "image_url" if app.path.endswith("image-to-image") else None
        if request.images and field is None:
            raise Unsupported(f"fal app {app.id} does not take reference images",
                              param="image_urls")
        if len(request.images) > 1:
            raise Unsupported(f"fal app {app.id} takes one reference image", param="image_urls")
        body.update(_flux_size(request))
        return Plan(app, body, field)
    if app.alias.startswith("nano-banana") and request.images and not app.is_edit:
        app = replace(app, path=f"{app.path}/edit" if app.path else "edit")
    if app.is_edit and not request.images:
        raise Unsupported(f"fal app {app.id} edits images: send a reference image",
                          param="image_urls")
    body.update(_banana_size(request, app))
    return Plan(app, body, "image_urls")


def _flux_size(request: GenerationRequest) -> dict[str, Any]:
    if request.size is not None:
        return {"image_size": {"width": request.size[0], "height": request.size[1]}}
    ratio = request.aspect_ratio if request.aspect_ratio != "auto" else None
    at_1k = request.resolution in (None, "1k")
    if ratio is None and at_1k:
        return {}
    preset = FLUX_PRESETS.get(ratio or "")
    if preset is not None and at_1k:
        return {"image_size": preset}
    width, height = images.pixel_size(None, ratio, request.resolution)
    return {"image_size": {"width": width, "height": height}}


def _banana_size(request: GenerationRequest, app: App) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ratio = request.aspect_ratio
    if request.size is not None:
        ratio = nearest_ratio(*request.size, BANANA_RATIOS)
    if ratio and ratio != "auto":
        out["aspect_ratio"] = ratio
    if app.takes_resolution:
        if request.resolution or request.size:
            out["resolution"] = resolution_of(request).upper()
    elif request.resolution not in (None, "1k"):
        raise Unsupported(f"fal app {app.id} makes 1K images only", param="resolution")
    return out
