"""A fake xAI image API answering like the real one per PROVIDERS.md "xAI":
JSON-only generations and edits, ``size``/``style`` refused, a bad key as a 400
``{"code", "error"}`` body, results as JPEG by ``url`` or ``b64_json``."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from muxproxy import images
from tests.fakes.openai import BLOCKED_WORD, ApiError, FakeImagesAPI, Recorded

XAI_KEY = "xai-test-fake-key-0001"
MODELS = frozenset({"grok-imagine-image", "grok-imagine-image-pro", "grok-2-image"})
ASPECT_RATIOS = frozenset({"1:1", "3:4", "4:3", "9:16", "16:9", "2:3", "3:2", "1:2", "2:1",
                           "9:19.5", "19.5:9", "9:20", "20:9", "auto"})
FIELDS = frozenset({"model", "prompt", "n", "response_format", "aspect_ratio", "resolution",
                    "quality", "user"})
EDIT_FIELDS = frozenset({"image", "images", "mask"})
INVALID = "Client specified an invalid argument"


def _bad(message: str, status: int = 400, code: str = INVALID) -> ApiError:
    return ApiError(status, {"code": code, "error": message})


class FakeXAI(FakeImagesAPI):
    image_format = "JPEG"
    content_type = "image/jpeg"

    def __init__(self, key: str = XAI_KEY) -> None:
        super().__init__(key, (30, 60, 220))

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self._generations)
        app.router.add_post("/v1/images/edits", self._edits)

    def error_body(self, status: int) -> Any:
        if status == 429:
            return {"code": "Too many requests", "error": "Your team has exceeded its "
                    "rate limit for images. Please retry later."}
        if status >= 500:
            return {"code": "Internal error", "error": "Service temporarily unavailable. "
                    "The model is overloaded."}
        return {"code": INVALID, "error": f"Request failed with status {status}"}

    def authenticate(self, request: web.Request) -> None:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if given != self.key:
            shown = f"{given[:2]}***{given[-2:]}" if given else "(none)"
            raise _bad(f"Incorrect API key provided: {shown}. You can obtain an API key "
                       "from https://console.x.ai.")

    async def _generations(self, request: web.Request) -> web.Response:
        return await self._handle(request, edit=False)

    async def _edits(self, request: web.Request) -> web.Response:
        return await self._handle(request, edit=True)

    async def _handle(self, request: web.Request, *, edit: bool) -> web.Response:
        recorded = Recorded(request.method, request.path, dict(request.headers))
        try:
            await self.gate(request, recorded)
            if request.content_type != "application/json":
                raise _bad(f"Expected request with `Content-Type: application/json`, got "
                           f"{request.content_type}", 415, "Unsupported media type")
            body = await request.json()
            recorded.json = body
            self._validate(body, edit=edit)
            return self._answer(request, body)
        except ApiError as exc:
            return web.json_response(exc.body, status=exc.status, headers=exc.headers)

    def _validate(self, body: dict[str, Any], *, edit: bool) -> None:
        for name in body:
            if name not in FIELDS and not (edit and name in EDIT_FIELDS):
                raise _bad(f"Argument not supported: {name}")
        if body.get("model") not in MODELS:
            raise _bad(f"The model {body.get('model')} does not exist or your team does not "
                       "have access to it.", 404, "Some requested entity was not found")
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            raise _bad("prompt: field is required")
        checks = (("n", lambda v: isinstance(v, int) and 1 <= v <= 10),
                  ("aspect_ratio", ASPECT_RATIOS.__contains__),
                  ("resolution", {"1k", "2k"}.__contains__),
                  ("quality", {"low", "medium"}.__contains__),
                  ("response_format", {"url", "b64_json"}.__contains__))
        for name, ok in checks:
            if name in body and not ok(body[name]):
                raise _bad(f"Invalid value for {name}: {body[name]!r}")
        if edit:
            refs = ([body["image"]] if "image" in body else []) + list(body.get("images", []))
            if not refs:
                raise _bad("image: field is required for image edits")
            for ref in [*refs, *([body["mask"]] if "mask" in body else [])]:
                _check_image(ref)
        if BLOCKED_WORD in body["prompt"]:
            raise ApiError(400, {"error": {
                "message": "Generated image rejected by content moderation.",
                "type": "invalid_request_error", "code": "content_moderation"}})

    def _answer(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        items = []
        for _ in range(body.get("n", 1)):
            item: dict[str, Any] = {"revised_prompt": f"revised: {body['prompt']}"}
            if body.get("response_format") == "b64_json":
                item.update(b64_json=self.b64(), mime_type=self.content_type)
            else:
                item["url"] = self.image_url(request)
            items.append(item)
        return web.json_response({"data": items})


def _check_image(ref: Any) -> None:
    url = ref.get("url") if isinstance(ref, dict) else None
    if not isinstance(url, str):
        raise _bad("image: expected an object with a url")
    if url.startswith("https://"):
        return
    header, _, payload = url.partition(",")
    if not (header.startswith("data:image/") and header.endswith(";base64")):
        raise _bad("image url must be a https URL or a base64 data URI")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("image data URI holds invalid base64") from None
    if images.sniff(data) is None:
        raise _bad("Unsupported image format")
