"""Any service that speaks OpenAI's Images API (modelmax, local servers...).

``POST {base_url}/images/generations`` with JSON, ``POST {base_url}/images/edits``
with multipart when the request carries reference images, ``Authorization: Bearer``.
No model tables here: size, quality, style and response_format go through as given,
and the service may answer with ``url`` or ``b64_json`` images.

With ``stream`` in the body (set by the OpenAI adapter for a client streaming
``partial_images``), the answer is read as server-sent events: each partial image
goes to ``Call.on_partial`` as it arrives, the ``*.completed`` events are the result.

This is the general class; :mod:`muxproxy.providers.openai` adds OpenAI's model
rules and :mod:`muxproxy.providers.xai` xAI's dialect on top of it, through the
``fields`` / ``edit_payload`` hooks.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from muxproxy import images, sse
from muxproxy.generation import GenerationRequest, PartialImage
from muxproxy.providers.base import (
    Call,
    Finished,
    ImageData,
    ImageLink,
    Output,
    Provider,
    SubmitOutcome,
    Unsupported,
    UpstreamError,
    ok,
)
from muxproxy.providers.wire import message_at, read_error

# Options a client may set through ``request.extra``; route params may set them too
# (and win, being the operator's fixed choice).
OPTIONS = frozenset({"style", "background", "user", "moderation", "output_compression",
                     "input_fidelity", "response_format"})
# Fields the adapter owns; a route param cannot replace them.
RESERVED = frozenset({"model", "prompt", "image", "image[]", "images", "mask", "stream",
                      "partial_images"})
# What a streamed event may say about its image, passed on to a streaming client.
EVENT_FIELDS = ("size", "quality", "background", "output_format")
# Where these APIs put the message and the code: ``{"error": {"message", "code"}}``,
# ``{"code", "error": "..."}`` (xAI), a plain ``{"message"}`` or ``{"detail"}``.
MESSAGE_PATHS = ("error.message", "error", "message", "detail")
CODE_PATHS = ("error.code", "code")


class OpenAICompatibleProvider(Provider):
    needs_key = False
    kind = "openai-compatible"
    honours = frozenset({"background", "output_compression", "moderation", "input_fidelity",
                         "style"})
    error_paths = MESSAGE_PATHS

    def check(self, request: GenerationRequest, upstream_model: str,
              params: Mapping[str, Any]) -> None:
        self.fields(request, upstream_model, params)

    def fields(self, request: GenerationRequest, model: str,
               params: Mapping[str, Any]) -> dict[str, Any]:
        """The request body without images. Raises :class:`Unsupported`."""
        require_image_for_mask(request)
        body: dict[str, Any] = {"model": model, "prompt": request.prompt, "n": request.n}
        if request.size is not None:
            body["size"] = f"{request.size[0]}x{request.size[1]}"
        elif request.aspect_ratio == "auto" and request.resolution is None:
            body["size"] = "auto"
        elif request.aspect_ratio or request.resolution:
            width, height = images.pixel_size(None, request.aspect_ratio, request.resolution)
            body["size"] = f"{width}x{height}"
        if request.quality is not None:
            body["quality"] = request.quality
        if request.output_format is not None:
            body["output_format"] = request.output_format
        body.update(options(request, params))
        return body

    async def submit(self, call: Call) -> SubmitOutcome:
        body = self.fields(call.request, call.upstream_model, call.params)
        if call.images:
            url = f"{self.base_url}/images/edits"
            payload = await self.edit_payload(call, body)
        else:
            url = f"{self.base_url}/images/generations"
            payload = {"json": body}
        if body.get("stream"):
            return await self.streamed(url, payload, call)
        return self.finished(await self.call_json("POST", url, **payload))

    async def streamed(self, url: str, payload: dict[str, Any], call: Call) -> Finished:
        """A streamed answer: partial images handed on as they come, the completed
        images kept. A JSON answer (a server that does not stream) is read as usual."""
        outputs: list[Output] = []
        async with self.call("POST", url, **payload) as response:
            if not ok(response):
                raise await self.upstream_error(response)
            if response.content_type != "text/event-stream":
                return self.finished(await self.read_json(response))
            limit = self.settings.max_response_bytes
            try:
                async for event in sse.read_events(response.content.iter_any(), limit):
                    self._on_event(event, call, outputs)
            except sse.TooLarge:
                raise UpstreamError(f"{self.name}: upstream stream larger than {limit} "
                                    f"bytes (providers.{self.name}.max_response_bytes)",
                                    transient=False, code="response_too_large") from None
        if not outputs:
            raise UpstreamError(f"{self.name}: the stream ended without an image",
                                transient=True)
        return Finished(images=tuple(outputs))

    def _on_event(self, event: sse.Event, call: Call, outputs: list[Output]) -> None:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{self.name}: invalid JSON in a streamed event",
                                transient=True) from None
        if not isinstance(data, dict):
            return
        kind = data["type"] if isinstance(data.get("type"), str) else event.event
        if event.event == "error" or kind == "error" or data.get("error"):
            raise self._stream_error(data)
        b64 = data.get("b64_json")
        if not isinstance(b64, str):
            return
        if kind.endswith(".partial_image"):
            index = data.get("partial_image_index")
            fields = {k: data[k] for k in EVENT_FIELDS if isinstance(data.get(k), str)}
            call.on_partial(PartialImage(index=index if isinstance(index, int) else 0,
                                         b64_json=b64, fields=fields))
        elif kind.endswith(".completed"):
            outputs.append(ImageData(self._decode(b64)))

    def _stream_error(self, data: Mapping[str, Any]) -> UpstreamError:
        """An ``error`` event: a failure after the answer began (its status was 200)."""
        error = data.get("error")
        error = error if isinstance(error, dict) else data
        message = error.get("message") if isinstance(error.get("message"), str) else ""
        code = error.get("code") if isinstance(error.get("code"), str) else None
        # A server fault mid-stream may pass on a new try; anything else is final.
        transient = error.get("type") == "server_error" and code != "moderation_blocked"
        return UpstreamError(f"{self.name}: {message or 'error during the stream'}",
                             transient=transient, code=code)

    async def edit_payload(self, call: Call, body: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the edits request: OpenAI's multipart form.

        One reference image goes in part ``image``, several in repeated ``image[]``
        parts (as openai-python sends them), the mask in ``mask``.
        """
        form = aiohttp.FormData(default_to_multipart=True)
        for name, value in body.items():
            form.add_field(name, form_value(value))
        part = "image" if len(call.images) == 1 else "image[]"
        for index, ref in enumerate(call.images):
            data, content_type = await self.reference_bytes(ref)
            form.add_field(part, data, content_type=content_type,
                           filename=f"image{index}.{images.EXTENSIONS[content_type]}")
        if call.mask is not None:
            data, content_type = await self.reference_bytes(call.mask)
            form.add_field("mask", data, content_type=content_type,
                           filename=f"mask.{images.EXTENSIONS[content_type]}")
        return {"data": form}

    async def upstream_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        """Classify a non-2xx answer with the provider's own message.

        Beyond :meth:`Provider.error_for`: a moderation block is permanent whatever
        the status, ``x-should-retry`` overrides the status (as the OpenAI SDK obeys
        it), and ``retry-after-ms`` is preferred to ``Retry-After``.
        """
        body = (await read_error(response)).json
        blocked = message_at(body, CODE_PATHS) == "moderation_blocked"
        error = self.error_for(response, message_at(body, self.error_paths) or "",
                               code="moderation_blocked" if blocked else None)
        override = {"false": False, "true": True}.get(response.headers.get("x-should-retry", ""))
        transient = False if blocked else error.transient if override is None else override
        if transient != error.transient:
            error = UpstreamError(error.message, transient=transient, status=error.status,
                                  retry_after=error.retry_after,
                                  code="moderation_blocked" if blocked else None)
        retry_ms = self.retry_after(response, "retry-after-ms")
        if retry_ms is not None:
            error.retry_after = retry_ms / 1000
        return error

    def finished(self, result: Any) -> Finished:
        """``{"data": [{"b64_json"|"url", "revised_prompt"?}]}`` as images."""
        items = result.get("data") if isinstance(result, dict) else None
        if not isinstance(items, list):
            # Some compatible servers answer 200 with an error body.
            message = message_at(result, self.error_paths)
            raise UpstreamError(f"{self.name}: {message or 'response without a data list'}",
                                transient=False, code="upstream_error")
        outputs: list[Output] = []
        revised = None
        for item in items:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("b64_json"), str):
                mime_type = item.get("mime_type")
                outputs.append(ImageData(self._decode(item["b64_json"]),
                                         mime_type if isinstance(mime_type, str) else None))
            elif isinstance(item.get("url"), str):
                outputs.append(ImageLink(item["url"]))
            if revised is None and isinstance(item.get("revised_prompt"), str):
                revised = item["revised_prompt"]
        return Finished(images=tuple(outputs), revised_prompt=revised)

    def _decode(self, data: str) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise UpstreamError(f"{self.name}: upstream sent invalid base64 image data",
                                transient=False, code="upstream_error") from None


def require_image_for_mask(request: GenerationRequest) -> None:
    if request.mask is not None and not request.images:
        raise Unsupported("a mask needs a reference image to apply to", param="mask")


def options(request: GenerationRequest, params: Mapping[str, Any]) -> dict[str, Any]:
    """Body options: known names from ``request.extra``, then every route param."""
    found = {k: v for k, v in request.extra.items() if k in OPTIONS and v is not None}
    found.update({k: v for k, v in params.items() if k not in RESERVED})
    return found


def form_value(value: Any) -> str:
    """A multipart text part: ints as decimal strings, bools as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)
