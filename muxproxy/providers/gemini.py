"""Google Gemini image models ("nano banana") through ``generateContent``: sync.

One call makes one image, so a request for ``n`` images fans out into ``n``
concurrent calls with the same body; the job gets all ``n`` images or fails
(a permanent failure of any call wins, the others are cancelled).

Reference images travel inline (``inlineData``), URL-only ones are downloaded
first. There is no mask. ``size`` maps to the nearest supported ``aspectRatio``
and, when no ``resolution`` is given, to the ``imageSize`` nearest by pixel area.
Gemini picks the output format itself (PNG in practice): ``output_format`` is
not sent. Route ``params`` may add ``generationConfig`` keys (e.g.
``temperature``) and ``safetySettings``.

A block arrives as HTTP 200 (``promptFeedback.blockReason`` without candidates,
or a candidate without an image part and a ``finishReason`` saying why): that is
a permanent failure carrying Gemini's reason, never a job completed without an
image. gemini-3-pro may stream interim "thought" images first; the last image
that is not a thought is the result.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from muxproxy.generation import GenerationRequest
from muxproxy.providers.base import (
    Call,
    Finished,
    ImageData,
    Provider,
    SubmitOutcome,
    Unsupported,
    UpstreamError,
)
from muxproxy.providers.fanout import all_or_nothing
from muxproxy.providers.payloads import as_dict
from muxproxy.providers.sizes import nearest_ratio, nearest_resolution
from muxproxy.providers.wire import clip, read_error

ASPECT_RATIOS: tuple[str, ...] = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16",
                                  "16:9", "21:9")
IMAGE_SIZES: Mapping[str, str] = {"1k": "1K", "2k": "2K", "4k": "4K"}

# Why a candidate came back without an image, in words a client can act on.
FINISH_REASONS: Mapping[str, str] = {
    "IMAGE_SAFETY": "the generated image was blocked by Gemini's safety filters",
    "IMAGE_PROHIBITED_CONTENT": "the generated image was blocked as prohibited content",
    "IMAGE_RECITATION": "the generated image was blocked as a recitation of existing work",
    "IMAGE_OTHER": "image generation stopped for an unspecified reason",
    "NO_IMAGE": "the model did not generate an image",
    "SAFETY": "the response was blocked by Gemini's safety filters",
    "PROHIBITED_CONTENT": "the response was blocked as prohibited content",
    "RECITATION": "the response was blocked as a recitation of existing work",
    "BLOCKLIST": "the response contained a blocklisted term",
    "SPII": "the response may contain sensitive personal information",
}
_MODERATION = frozenset(FINISH_REASONS) - {"IMAGE_OTHER", "NO_IMAGE"}
_RETRY_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


@dataclass(frozen=True)
class ModelLimits:
    resolutions: tuple[str, ...]
    max_references: int
    aspect_ratios: tuple[str, ...] = ASPECT_RATIOS


# By model name prefix (longest wins), so dated or -preview variants share limits.
# Unknown Gemini models get the permissive default and the API has the last word.
MODELS: Mapping[str, ModelLimits] = {
    "gemini-2.5-flash-image": ModelLimits(("1k",), 3),
    "gemini-3-pro-image": ModelLimits(("1k", "2k", "4k"), 14),
    "gemini-3.1-flash-image": ModelLimits(("1k", "2k", "4k"), 14,
                                          (*ASPECT_RATIOS, "1:4", "4:1", "1:8", "8:1")),
}
DEFAULT_LIMITS = ModelLimits(("1k", "2k", "4k"), 14)


def limits_for(model: str) -> ModelLimits:
    matches = [prefix for prefix in MODELS if model.startswith(prefix)]
    return MODELS[max(matches, key=len)] if matches else DEFAULT_LIMITS


def aspect_ratio_for(request: GenerationRequest, limits: ModelLimits) -> str | None:
    if request.aspect_ratio and request.aspect_ratio != "auto":
        return request.aspect_ratio
    if request.size is not None:
        return nearest_ratio(*request.size, limits.aspect_ratios)
    return None


def image_size_for(request: GenerationRequest, limits: ModelLimits) -> str | None:
    """``imageSize`` to send; None leaves the model's default (1K), and models that
    only make 1K images are never sent the field."""
    if limits.resolutions == ("1k",):
        return None
    if request.resolution:
        return IMAGE_SIZES[request.resolution]
    if request.size is not None:
        return IMAGE_SIZES[nearest_resolution(*request.size, limits.resolutions)]
    return None


class GeminiProvider(Provider):
    kind = "gemini"
    is_async = False

    def check(self, request: GenerationRequest, upstream_model: str,
              params: Mapping[str, Any]) -> None:
        limits = limits_for(upstream_model)
        if request.mask is not None:
            raise Unsupported("Gemini image models take no mask: describe the edit in the "
                              "prompt and send the image alone", param="mask")
        if request.resolution and request.resolution not in limits.resolutions:
            raise Unsupported(f"{upstream_model} supports resolution "
                              f"{', '.join(limits.resolutions)}, not {request.resolution!r}",
                              param="resolution")
        ratio = request.aspect_ratio
        if ratio and ratio != "auto" and ratio not in limits.aspect_ratios:
            raise Unsupported(f"{upstream_model} supports aspect ratios "
                              f"{', '.join(limits.aspect_ratios)}, not {ratio!r}",
                              param="aspect_ratio")
        if len(request.images) > limits.max_references:
            raise Unsupported(f"{upstream_model} takes at most {limits.max_references} "
                              f"reference images, got {len(request.images)}",
                              param="image_urls")

    async def submit(self, call: Call) -> SubmitOutcome:
        self.check(call.request, call.upstream_model, call.params)
        body = await self._body(call)
        url = f"{self.base_url}/models/{call.upstream_model}:generateContent"
        results = await all_or_nothing([self._generate(url, body)
                                        for _ in range(call.request.n)])
        texts = [text for _, text in results if text]
        return Finished(images=tuple(image for image, _ in results),
                        revised_prompt=texts[0] if texts else None)

    async def _body(self, call: Call) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": call.request.prompt}]
        for ref in call.images:
            data, content_type = await self.reference_bytes(ref)
            parts.append({"inlineData": {"mimeType": content_type,
                                         "data": base64.b64encode(data).decode("ascii")}})
        limits = limits_for(call.upstream_model)
        image_config: dict[str, str] = {}
        if (ratio := aspect_ratio_for(call.request, limits)) is not None:
            image_config["aspectRatio"] = ratio
        if (size := image_size_for(call.request, limits)) is not None:
            image_config["imageSize"] = size
        config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
        if image_config:
            config["imageConfig"] = image_config
        config.update(call.params.get("generationConfig", {}))
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": parts}],
                                "generationConfig": config}
        if "safetySettings" in call.params:
            body["safetySettings"] = call.params["safetySettings"]
        return body

    async def _generate(self, url: str, body: dict[str, Any]) -> tuple[ImageData, str | None]:
        return self.parse(await self.call_json("POST", url, json=body))

    def parse(self, data: Any) -> tuple[ImageData, str | None]:
        """The result image and the model's text from a 200 answer, or why there is none."""
        if not isinstance(data, dict):
            raise UpstreamError(f"{self.name}: unexpected response shape", transient=True)
        candidates = data.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            feedback = data.get("promptFeedback") or {}
            reason = feedback.get("blockReason")
            if reason:
                detail = feedback.get("blockReasonMessage")
                raise UpstreamError(
                    f"{self.name}: the prompt was blocked by Gemini (blockReason {reason})"
                    + (f": {detail}" if detail else ""),
                    transient=False, code="content_blocked")
            raise UpstreamError(f"{self.name}: Gemini answered without a candidate",
                                transient=True)
        candidate = candidates[0] if isinstance(candidates[0], dict) else {}
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        parts = parts if isinstance(parts, list) else []
        final = [p for p in parts if isinstance(p, dict) and not p.get("thought")]
        text = " ".join(p["text"].strip() for p in final
                        if isinstance(p.get("text"), str) and p["text"].strip()) or None
        inline = [p["inlineData"] for p in final if isinstance(p.get("inlineData"), dict)]
        if not inline:
            raise self._no_image(candidate, text)
        image = inline[-1]
        try:
            payload = base64.b64decode(image.get("data") or "", validate=True)
        except (binascii.Error, ValueError):
            raise UpstreamError(f"{self.name}: Gemini sent an image that is not valid base64",
                                transient=True) from None
        return ImageData(payload, image.get("mimeType")), text

    def _no_image(self, candidate: Mapping[str, Any], text: str | None) -> UpstreamError:
        reason = candidate.get("finishReason") or "unknown"
        why = FINISH_REASONS.get(reason, "the model returned no image")
        message = f"{self.name}: no image: {why} (finishReason {reason})"
        said = candidate.get("finishMessage") or text
        if said:
            message += f"; Gemini said: {clip(said)}"
        return UpstreamError(message, transient=False,
                             code="content_blocked" if reason in _MODERATION else "no_image")

    async def upstream_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        """Gemini's ``{"error": {"code", "message", "status", "details"}}`` classified by
        HTTP status; a RetryInfo ``retryDelay`` stands in for a missing Retry-After."""
        body = await read_error(response)
        error = as_dict(body.json).get("error")
        if not isinstance(error, dict):
            snippet = body.snippet
            return self.error_for(response, f"HTTP {response.status}"
                                  + (f": {snippet}" if snippet else ""))
        status = error.get("status")
        message = str(error.get("message") or f"HTTP {response.status}")
        exc = self.error_for(response, f"{message} ({status})" if status else message,
                             code=status.lower() if isinstance(status, str) else None)
        if exc.retry_after is None:
            exc.retry_after = _retry_delay(error.get("details"))
        return exc


def _retry_delay(details: Any) -> float | None:
    for item in details if isinstance(details, list) else ():
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            match = _RETRY_DELAY.match(str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
