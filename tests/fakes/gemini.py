"""A fake Gemini API (``v1beta/models/{model}:generateContent``) on loopback.

Answers like generativelanguage.googleapis.com: ``x-goog-api-key`` checked (no
key: 403 PERMISSION_DENIED; a wrong one: 400 INVALID_ARGUMENT "API key not
valid..." with its ErrorInfo), unknown models 404, bodies checked field by field
(camelCase or snake_case, as the real proto-JSON parser accepts), and results as
``candidates[0].content.parts`` with base64 ``inlineData``.

``script`` holds behaviours for the next calls, in order (see ``BEHAVIOURS``);
when it is empty a call succeeds ("thinking" for gemini-3-pro, which sends a
thought image before the final one; "ok" otherwise). ``calls`` counts every
request, ``bodies`` keeps the ones that passed validation.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fakes.images import solid

MODELS = frozenset({"gemini-2.5-flash-image", "gemini-3-pro-image-preview",
                    "gemini-3.1-flash-image-preview"})
THINKING = frozenset({"gemini-3-pro-image-preview"})
ASPECT_RATIOS = frozenset({"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9",
                           "21:9", "1:4", "4:1", "1:8", "8:1"})
IMAGE_SIZES = frozenset({"1K", "2K", "4K"})

_FIELDS: dict[str, frozenset[str]] = {
    "": frozenset({"contents", "generationConfig", "safetySettings", "systemInstruction",
                   "tools", "toolConfig", "cachedContent"}),
    "contents": frozenset({"role", "parts"}),
    "parts": frozenset({"text", "inlineData", "fileData", "thought", "thoughtSignature"}),
    "inlineData": frozenset({"mimeType", "data"}),
    "generationConfig": frozenset({"responseModalities", "imageConfig", "temperature", "topP",
                                   "topK", "candidateCount", "seed", "maxOutputTokens"}),
    "imageConfig": frozenset({"aspectRatio", "imageSize"}),
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def error(code: int, status: str, message: str, details: list[Any] | None = None
          ) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        body["details"] = details
    return web.json_response({"error": body}, status=code)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class FakeGemini:
    def __init__(self, api_key: str = "gemini-fake-key") -> None:
        self.api_key = api_key
        self.script: list[str] = []
        self.calls = 0
        self.bodies: list[dict[str, Any]] = []
        self.final_image = solid((20, 160, 60))
        self.thought_image = solid((200, 40, 40))
        self.url = ""  # the base URL (.../v1beta) while running

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1beta/models/{target}", self.generate)
        return app

    async def generate(self, request: web.Request) -> web.Response:
        self.calls += 1
        model, _, method = request.match_info["target"].partition(":")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return error(403, "PERMISSION_DENIED",
                         "Method doesn't allow unregistered callers (callers without "
                         "established identity). Please use API Key or other form of API "
                         "consumer identity to call this API.")
        if key != self.api_key:
            return error(400, "INVALID_ARGUMENT",
                         "API key not valid. Please pass a valid API key.",
                         [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                           "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                           "metadata": {"service": "generativelanguage.googleapis.com"}},
                          {"@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                           "locale": "en-US",
                           "message": "API key not valid. Please pass a valid API key."}])
        if method != "generateContent" or model not in MODELS:
            return error(404, "NOT_FOUND",
                         f"models/{model} is not found for API version v1beta, or is not "
                         f"supported for {method or 'generateContent'}. Call ListModels to "
                         "see the list of available models and their supported methods.")
        try:
            body = await request.json()
        except ValueError:
            return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        problem = _validate(body)
        if problem is not None:
            return error(400, "INVALID_ARGUMENT", problem)
        self.bodies.append(body)
        behaviour = self.script.pop(0) if self.script else \
            "thinking" if model in THINKING else "ok"
        return BEHAVIOURS[behaviour](self, model)

    def _success(self, model: str, parts: list[dict[str, Any]], finish: str = "STOP",
                 **candidate: Any) -> web.Response:
        entry: dict[str, Any] = {"finishReason": finish, "index": 0, **candidate}
        if parts:
            entry["content"] = {"parts": parts, "role": "model"}
        return web.json_response({
            "candidates": [entry],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1290,
                              "totalTokenCount": 1302,
                              "promptTokensDetails": [{"modality": "TEXT",
                                                       "tokenCount": 12}]},
            "modelVersion": model, "responseId": f"resp-{self.calls}"})

    def ok(self, model: str) -> web.Response:
        return self._success(model, [
            {"text": "Here is the image you asked for."},
            {"inlineData": {"mimeType": "image/png", "data": _b64(self.final_image)}}])

    def thinking(self, model: str) -> web.Response:
        return self._success(model, [
            {"text": "**Composing the scene**\nPlanning the layout.", "thought": True},
            {"inlineData": {"mimeType": "image/png", "data": _b64(self.thought_image)},
             "thought": True},
            {"text": "Here is the finished image."},
            {"inlineData": {"mimeType": "image/png", "data": _b64(self.final_image)},
             "thoughtSignature": "c2lnbmF0dXJl"}])

    def thought_only(self, model: str) -> web.Response:
        return self._success(model, [
            {"inlineData": {"mimeType": "image/png", "data": _b64(self.thought_image)},
             "thought": True}], finish="IMAGE_OTHER")

    def prompt_blocked(self, model: str) -> web.Response:
        return web.json_response({
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
            "modelVersion": model, "responseId": f"resp-{self.calls}"})

    def image_safety(self, model: str) -> web.Response:
        return self._success(model, [], finish="IMAGE_SAFETY",
                             finishMessage="Unable to show the generated image. The image was "
                                           "filtered out because it violated Google's "
                                           "Generative AI Prohibited Use policy.")

    def no_image(self, model: str) -> web.Response:
        return self._success(model, [{"text": "I can only describe this scene in words."}],
                             finish="NO_IMAGE")

    def text_only(self, model: str) -> web.Response:
        return self._success(model, [{"text": "I'm not able to help with that request."}])

    def rate_limited(self, model: str) -> web.Response:
        return error(429, "RESOURCE_EXHAUSTED",
                     "You exceeded your current quota, please check your plan and billing "
                     "details.",
                     [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                       "violations": [{"quotaMetric": "generativelanguage.googleapis.com/"
                                                      "generate_content_free_tier_requests",
                                       "quotaId": "GenerateRequestsPerMinutePerProject"}]},
                      {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                       "retryDelay": "2s"}])

    def internal(self, model: str) -> web.Response:
        return error(500, "INTERNAL", "An internal error has occurred. Please retry or "
                     "report in https://developers.generativeai.google/guide/troubleshooting")

    def unavailable(self, model: str) -> web.Response:
        return error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")

    def invalid(self, model: str) -> web.Response:
        return error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")


BEHAVIOURS: dict[str, Callable[[FakeGemini, str], web.Response]] = {
    name: getattr(FakeGemini, name)
    for name in ("ok", "thinking", "thought_only", "prompt_blocked", "image_safety",
                 "no_image", "text_only", "rate_limited", "internal", "unavailable", "invalid")
}


def _unknown(obj: dict[str, Any], where: str) -> str | None:
    for name in obj:
        if _camel(name) not in _FIELDS[where]:
            at = f" at '{_snake(where)}'" if where else ""
            return f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.'
    return None


def _get(obj: dict[str, Any], name: str) -> Any:
    return obj.get(name, obj.get(_snake(name)))


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    contents = body.get("contents")
    problem = _unknown(body, "")
    if problem:
        return problem
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n"
    for i, content in enumerate(contents):
        problem = _unknown(content, "contents")
        if problem:
            return problem
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be " \
                   "empty.\n"
        for j, part in enumerate(parts):
            problem = _unknown(part, "parts") or _part(part, f"contents[{i}].parts[{j}]")
            if problem:
                return problem
    config = _get(body, "generationConfig") or {}
    problem = _unknown(config, "generationConfig")
    if problem:
        return problem
    for modality in _get(config, "responseModalities") or ():
        if modality not in ("TEXT", "IMAGE", "AUDIO"):
            return f"Invalid value at 'generation_config.response_modalities[0]' " \
                   f'(type.googleapis.com/google.ai.generativelanguage.v1beta.GenerationConfig.' \
                   f'Modality), "{modality}"'
    image_config = _get(config, "imageConfig") or {}
    problem = _unknown(image_config, "imageConfig")
    if problem:
        return problem
    ratio, size = _get(image_config, "aspectRatio"), _get(image_config, "imageSize")
    if ratio is not None and ratio not in ASPECT_RATIOS:
        return f"Unsupported aspect ratio: {ratio}"
    if size is not None and size not in IMAGE_SIZES:
        return f"Unsupported image size: {size}. Supported values are 1K, 2K and 4K."
    return None


def _part(part: dict[str, Any], where: str) -> str | None:
    inline = _get(part, "inlineData")
    if inline is None:
        return None
    problem = _unknown(inline, "inlineData")
    if problem:
        return problem
    if not _get(inline, "mimeType"):
        return f"* GenerateContentRequest.{where}.inline_data.mime_type: required\n"
    try:
        base64.b64decode(inline.get("data", ""), validate=True)
    except (binascii.Error, ValueError):
        return f"Invalid value at '{_snake(where)}.inline_data.data' (TYPE_BYTES), Base64 " \
               "decoding failed"
    return None


@asynccontextmanager
async def running(fake: FakeGemini) -> AsyncIterator[FakeGemini]:
    """Serve the fake on a loopback port; ``fake.url`` is its v1beta base meanwhile."""
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/v1beta"))
    try:
        yield fake
    finally:
        await server.close()
