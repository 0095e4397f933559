"""Replicate predictions (async, optionally waiting at create).

Create ``POST {base_url}/models/{owner}/{name}/predictions`` with ``{"input": {...}}``
(or ``POST {base_url}/predictions`` with ``{"version"}`` for ``owner/name:version``);
poll the prediction's ``urls.get`` and cancel with ``urls.cancel``, both kept on the
job. ``options.wait_seconds`` (1-60, default off) sends ``Prefer: wait=N``: a
prediction that finishes within it completes the job without any poll.

A model failure is HTTP 200 with ``status: failed``; ``output`` is a list of URLs for
some models (flux-schnell, flux-dev) and a single URL for others (flux-1.1-pro,
kontext): both are read.

The input dialect follows the model name: ``flux-schnell*`` and ``flux-dev*`` make up
to four images (``num_outputs``); every other model makes one. ``aspect_ratio`` is
passed on (a ``size`` becomes ``aspect_ratio: custom`` with ``width``/``height`` on
flux-1.1-pro and flux-pro, the nearest ratio elsewhere); ``output_format`` ``jpeg`` is
sent as ``jpg``. One reference image goes to ``input_image`` (``image`` on flux-dev,
``image_prompt`` on flux-1.1-pro and flux-pro; flux-schnell takes none), as the
client's URL or a ``data:`` URI. Route ``params`` are merged into the input last.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from muxproxy.clock import Clock
from muxproxy.generation import GenerationRequest
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
from muxproxy.settings import ProviderSettings, SettingsError

RUNNING = frozenset({"starting", "processing"})
RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
CUSTOM_SIZE = range(256, 1441)
MAX_WAIT_SECONDS = 60


@dataclass(frozen=True)
class Dialect:
    multi_output: bool
    custom_size: bool
    image_field: str | None


def dialect(model: str) -> Dialect:
    name = model.partition(":")[0].rpartition("/")[2]
    if name.startswith("flux-schnell"):
        return Dialect(multi_output=True, custom_size=False, image_field=None)
    if name.startswith("flux-dev"):
        return Dialect(multi_output=True, custom_size=False, image_field="image")
    if name in ("flux-1.1-pro", "flux-pro"):
        return Dialect(multi_output=False, custom_size=True, image_field="image_prompt")
    return Dialect(multi_output=False, custom_size=False, image_field="input_image")


class ReplicateProvider(Provider):
    kind = "replicate"
    honours = frozenset({"seed"})
    is_async = True
    # RFC 7807: {"type", "title", "status", "detail"}
    error_paths = ("detail", "title")
    option_names = frozenset({"wait_seconds"})

    @classmethod
    def validate(cls, settings: ProviderSettings) -> None:
        super().validate(settings)
        wait = settings.options.get("wait_seconds", 0)
        if isinstance(wait, bool) or not isinstance(wait, int) or \
                not 0 <= wait <= MAX_WAIT_SECONDS:
            raise SettingsError(f"providers.{settings.name}.options.wait_seconds: a whole "
                                f"number of seconds, 0 (off) to {MAX_WAIT_SECONDS}")

    def __init__(self, settings: ProviderSettings, http: aiohttp.ClientSession,
                 clock: Clock) -> None:
        super().__init__(settings, http, clock)
        self.wait_seconds: int = settings.options.get("wait_seconds", 0)

    def check(self, request: GenerationRequest, upstream_model: str,
              params: Mapping[str, Any]) -> None:
        build_input(request, upstream_model)

    async def submit(self, call: Call) -> SubmitOutcome:
        body = build_input(call.request, call.upstream_model)
        if call.images:
            field = dialect(call.upstream_model).image_field
            assert field is not None
            body[field] = await reference_url(self, call.images[0])
        body.update(call.params)
        model, _, version = call.upstream_model.partition(":")
        if version:
            url, payload = f"{self.base_url}/predictions", {"version": version, "input": body}
        else:
            url, payload = f"{self.base_url}/models/{model}/predictions", {"input": body}
        headers = {"Prefer": f"wait={self.wait_seconds}"} if self.wait_seconds else {}
        prediction = as_dict(await self.call_json("POST", url, json=payload, headers=headers))
        prediction_id = prediction.get("id")
        if not isinstance(prediction_id, str) or not prediction_id:
            raise unexpected(self, "no prediction id")
        outcome = self._outcome(prediction)
        if isinstance(outcome, Finished):
            return outcome
        urls = as_dict(prediction.get("urls"))
        state = {key: urls[key] for key in ("get", "cancel") if isinstance(urls.get(key), str)}
        return Submitted(upstream_id=prediction_id, state=state)

    async def poll(self, handle: Handle) -> PollOutcome:
        return self._outcome(as_dict(await self.call_json("GET", self._url(handle, "get"))))

    async def cancel(self, handle: Handle) -> None:
        async with self.call("POST", self._url(handle, "cancel")) as response:
            if not ok(response):
                raise await self.upstream_error(response)

    def _outcome(self, prediction: dict[str, Any]) -> Finished | Running:
        status = prediction.get("status")
        if status in RUNNING:
            return Running()
        if status == "succeeded":
            output = prediction.get("output")
            items = output if isinstance(output, list) else [output]
            return Finished(images=tuple(ImageLink(u) for u in items if isinstance(u, str)))
        if status == "failed":
            error = prediction.get("error")
            raise UpstreamError(f"{self.name}: {error or 'prediction failed'}",
                                transient=False, code="prediction_failed")
        if status == "canceled":
            raise UpstreamError(f"{self.name}: prediction was canceled", transient=False,
                                code="prediction_canceled")
        raise unexpected(self, f"status {status!r}")

    def _url(self, handle: Handle, which: str) -> str:
        url = handle.state.get(which)
        if isinstance(url, str):
            return url
        base = f"{self.base_url}/predictions/{handle.upstream_id}"
        return base if which == "get" else f"{base}/{which}"



def build_input(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The prediction input short of the reference image; raises :class:`Unsupported`."""
    spec = dialect(model)
    if request.mask is not None:
        raise Unsupported(f"{model} does not take a mask", param="mask")
    if request.images and spec.image_field is None:
        raise Unsupported(f"{model} does not take reference images", param="image_urls")
    if len(request.images) > 1:
        raise Unsupported(f"{model} takes one reference image", param="image_urls")
    if request.resolution not in (None, "1k"):
        raise Unsupported(f"{model} makes images of about one megapixel; "
                          f"resolution {request.resolution!r} is not available",
                          param="resolution")
    body: dict[str, Any] = {"prompt": request.prompt}
    if spec.multi_output:
        if request.n > 4:
            raise Unsupported(f"{model} makes at most 4 images per request", param="n")
        body["num_outputs"] = request.n
    elif request.n != 1:
        raise Unsupported(f"{model} makes one image per request", param="n")
    if request.size is not None:
        width, height = request.size
        if spec.custom_size and width in CUSTOM_SIZE and height in CUSTOM_SIZE:
            body.update(aspect_ratio="custom", width=width, height=height)
        else:
            body["aspect_ratio"] = nearest_ratio(width, height, RATIOS)
    elif request.aspect_ratio and request.aspect_ratio != "auto":
        body["aspect_ratio"] = request.aspect_ratio
    if request.output_format:
        body["output_format"] = "jpg" if request.output_format == "jpeg" else \
            request.output_format
    seed = request.extra.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        body["seed"] = seed
    return body
