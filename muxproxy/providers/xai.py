"""xAI's image API (PROVIDERS.md "xAI"): OpenAI-like, with its own dialect.

- Generations take ``aspect_ratio`` (from xAI's list), ``resolution`` (1k|2k) and
  ``quality`` (low|medium), never ``size`` or ``style`` (xAI rejects both): an
  explicit size becomes the nearest listed aspect ratio and the resolution tier
  of its pixel area (as pricing judges it; 4k-sized requests get 2k).
- Edits are JSON, not multipart: one reference image as
  ``"image": {"url", "type": "image_url"}``, several as ``"images": [...]`` of the
  same objects, a mask as ``"mask": {...}`` (the last two are unconfirmed). https
  URLs go as they are; anything else is sent inline as a ``data:`` URI.
- The output format is xAI's choice (JPEG so far); ``output_format`` is not sent.
- Errors come as ``{"error": {"message"}}`` or ``{"code", "error": "..."}`` (a bad
  key is a 400 of the second kind): both are read by the shared error parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from muxproxy.generation import GenerationRequest
from muxproxy.pricing import resolution_of
from muxproxy.providers.base import Call, Reference, Unsupported
from muxproxy.providers.openai_compatible import (
    OpenAICompatibleProvider,
    options,
    require_image_for_mask,
)
from muxproxy.providers.payloads import data_uri
from muxproxy.providers.sizes import nearest_ratio, ratio_value

ASPECT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9", "2:3", "3:2", "1:2", "2:1", "9:19.5",
                 "19.5:9", "9:20", "20:9")
RESOLUTIONS = ("1k", "2k")
# Gateway quality -> xAI's (None: leave it to xAI); high and hd have no match.
QUALITIES: Mapping[str, str | None] = {"auto": None, "low": "low", "standard": "low",
                                       "medium": "medium"}
OPTIONS: Mapping[str, frozenset[str] | None] = {
    "response_format": frozenset({"url", "b64_json"}), "user": None}


class XAIProvider(OpenAICompatibleProvider):
    kind = "xai"
    needs_key = True

    def fields(self, request: GenerationRequest, model: str,
               params: Mapping[str, Any]) -> dict[str, Any]:
        require_image_for_mask(request)
        body: dict[str, Any] = {"model": model, "prompt": request.prompt, "n": request.n}
        ratio = _aspect_ratio(request)
        if ratio is not None:
            body["aspect_ratio"] = ratio
        if request.resolution is not None or request.size is not None:
            resolution = resolution_of(request)
            if request.resolution is None and resolution == "4k":
                resolution = "2k"  # a large explicit size: the best xAI offers
            if resolution not in RESOLUTIONS:
                raise Unsupported(f"xAI renders at 1k or 2k, not {resolution}",
                                  param="resolution")
            body["resolution"] = resolution
        if request.quality is not None:
            if request.quality not in QUALITIES:
                raise Unsupported(f"xAI supports quality low or medium, not "
                                  f"{request.quality!r}", param="quality")
            if (quality := QUALITIES[request.quality]) is not None:
                body["quality"] = quality
        for name, value in options(request, params).items():
            if name == "style":
                raise Unsupported("xAI does not take a style; describe it in the prompt",
                                  param="style")
            if name not in OPTIONS:
                raise Unsupported(f"xAI does not support {name!r}", param=name)
            allowed = OPTIONS[name]
            if allowed is not None and value not in allowed:
                raise Unsupported(f"{name} must be one of {', '.join(sorted(allowed))}",
                                  param=name)
            body[name] = value
        return body

    async def edit_payload(self, call: Call, body: Mapping[str, Any]) -> dict[str, Any]:
        refs = [await self._image_url(ref) for ref in call.images]
        payload = dict(body)
        if len(refs) == 1:
            payload["image"] = refs[0]
        else:
            payload["images"] = refs
        if call.mask is not None:
            payload["mask"] = await self._image_url(call.mask)
        return {"json": payload}

    async def _image_url(self, ref: Reference) -> dict[str, str]:
        if ref.url is not None and ref.url.startswith("https://"):
            return {"url": ref.url, "type": "image_url"}
        return {"url": data_uri(*await self.reference_bytes(ref)), "type": "image_url"}


def _aspect_ratio(request: GenerationRequest) -> str | None:
    name = request.aspect_ratio
    if name is not None:
        if name == "auto" or name in ASPECT_RATIOS:
            return name
        if request.extra.get("aspect_from_input"):
            return nearest_ratio(ratio_value(name), 1, ASPECT_RATIOS)
        raise Unsupported(f"xAI supports aspect ratios {', '.join(ASPECT_RATIOS)} or auto, "
                          f"not {name}", param="aspect_ratio")
    if request.size is None:
        return None
    return nearest_ratio(*request.size, ASPECT_RATIOS)
