"""A fake OpenAI Images API (and, with ``compatible=True``, an OpenAI-compatible
service such as modelmax), answering like the real ones per PROVIDERS.md.

Also the shared machinery of the OpenAI-like fakes (:class:`FakeImagesAPI`):
request log, queued failures, a hang switch, and result images served from the
fake's own loopback server for ``url`` answers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image

OPENAI_KEY = "sk-test-fake-openai-key"
BLOCKED_WORD = "forbidden"


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request."""

    data: bytes
    filename: str | None
    content_type: str | None


@dataclass
class Recorded:
    """One request the fake received (after the auth check passed or not)."""

    method: str
    path: str
    headers: Mapping[str, str]
    json: Any = None
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[Upload]] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    status: int
    body: Any
    headers: Mapping[str, str]


def make_image(color: tuple[int, int, int], fmt: str = "PNG", size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format=fmt)
    return out.getvalue()


class ApiError(Exception):
    """Raised inside a handler: the fake answers ``status`` with ``body``."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None
                 ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


class FakeImagesAPI:
    """What the OpenAI-like fakes share. Subclasses define the routes and bodies."""

    image_format = "PNG"
    content_type = "image/png"

    def __init__(self, key: str, color: tuple[int, int, int]) -> None:
        self.key = key
        #: Set by the test once the fake is served: the API root, ``.../v1``.
        self.base_url = ""
        self.image = make_image(color, self.image_format)
        self.requests: list[Recorded] = []
        self.downloads = 0
        self.hang = False
        self._failures: deque[Failure] = deque()
        self._release = asyncio.Event()
        self._ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/files/{name}", self._file)
        self.routes(app)

        async def release(_: web.Application) -> None:
            self._release.set()

        app.on_shutdown.append(release)
        return app

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def error_body(self, status: int) -> Any:
        raise NotImplementedError

    def fail(self, status: int, times: int = 1, *, body: Any = None,
             headers: Mapping[str, str] | None = None) -> None:
        """Answer the next ``times`` authenticated calls with ``status``."""
        for _ in range(times):
            self._failures.append(Failure(status, body if body is not None
                                          else self.error_body(status), dict(headers or {})))

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    async def gate(self, request: web.Request, recorded: Recorded) -> None:
        """Log the call, check auth, then apply a queued failure or the hang switch."""
        self.requests.append(recorded)
        self.authenticate(request)
        if self._failures:
            failure = self._failures.popleft()
            raise ApiError(failure.status, failure.body, failure.headers)
        if self.hang:
            await self._release.wait()
            raise ApiError(503, self.error_body(503))

    def authenticate(self, request: web.Request) -> None:
        raise NotImplementedError

    def image_url(self, request: web.Request) -> str:
        ext = self.content_type.split("/")[1]
        return f"http://{request.host}/files/img-{next(self._ids)}.{ext}"

    def b64(self) -> str:
        return base64.b64encode(self.image).decode()

    async def _file(self, request: web.Request) -> web.Response:
        self.downloads += 1
        return web.Response(body=self.image, content_type=self.content_type)


def _error(message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _unknown(name: str) -> ApiError:
    return ApiError(400, _error(f"Unknown parameter: '{name}'.", param=name,
                                code="unknown_parameter"))


def _invalid(name: str, value: Any, supported: Any = None) -> ApiError:
    tail = f" Supported values are: {', '.join(repr(s) for s in supported)}." \
        if supported else ""
    return ApiError(400, _error(f"Invalid value: '{value}'.{tail}", param=name,
                                code="invalid_value"))


@dataclass(frozen=True)
class ModelSpec:
    sizes: frozenset[str] | None  # None: gpt-image-2's free sizes
    qualities: frozenset[str]
    max_n: int
    edits: int  # most reference images, 0 = no edits
    gpt: bool


_GPT_Q = frozenset({"low", "medium", "high", "auto"})
_GPT_SIZES = frozenset({"auto", "1024x1024", "1536x1024", "1024x1536"})
MODELS: Mapping[str, ModelSpec] = {
    "gpt-image-2": ModelSpec(None, _GPT_Q, 10, 16, True),
    "gpt-image-1.5": ModelSpec(_GPT_SIZES, _GPT_Q, 10, 16, True),
    "gpt-image-1": ModelSpec(_GPT_SIZES, _GPT_Q, 10, 16, True),
    "gpt-image-1-mini": ModelSpec(_GPT_SIZES, _GPT_Q, 10, 16, True),
    "dall-e-3": ModelSpec(frozenset({"1024x1024", "1792x1024", "1024x1792"}),
                          frozenset({"standard", "hd"}), 1, 0, False),
    "dall-e-2": ModelSpec(frozenset({"256x256", "512x512", "1024x1024"}),
                          frozenset({"standard"}), 10, 1, False),
}
_COMMON = {"model", "prompt", "n", "size", "quality", "user"}
_GPT_ONLY = {"background", "moderation", "output_compression", "output_format", "stream",
             "partial_images"}
_EDIT_FILES = {"image", "image[]", "mask"}


class FakeOpenAI(FakeImagesAPI):
    """``compatible=True``: modelmax-like (any model, ``url`` answers by default,
    no model tables, 402 for an empty balance); otherwise OpenAI's model rules."""

    def __init__(self, key: str = OPENAI_KEY, *, compatible: bool = False) -> None:
        super().__init__(key, (200, 40, 40) if compatible else (40, 160, 90))
        self.compatible = compatible
        #: Streaming: an error object sent as an ``error`` event after the partials,
        #: instead of the completed events (a failure mid-stream).
        self.stream_error: dict[str, Any] | None = None
        #: Streaming: set, the stream waits for it after the partials (a slow render).
        self.stream_gate: asyncio.Event | None = None
        #: The partial images sent, in order (distinct images, one color each).
        self.partials: list[bytes] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self._generations)
        app.router.add_post("/v1/images/edits", self._edits)

    def error_body(self, status: int) -> Any:
        if status == 429:
            return _error("Rate limit reached for images per minute. Please try again "
                          "in 1s.", "requests", code="rate_limit_exceeded")
        if status == 402:
            return _error("Insufficient balance", "insufficient_quota",
                          code="insufficient_balance")
        if status == 502:
            return _error("Upstream provider error", "upstream_error")
        if status >= 500:
            return _error("The server had an error while processing your request. Sorry "
                          "about that!", "server_error")
        return _error(f"Request failed with status {status}.")

    def authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise ApiError(401, _error(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                "YOUR_KEY), or as the password field (i.e. sk-xxx:) if you're accessing "
                "the API from your browser and are prompted for a username and password. "
                "You can obtain an API key from https://platform.openai.com/account/api-keys."))
        given = header.removeprefix("Bearer ")
        if given != self.key:
            raise ApiError(401, _error(
                f"Incorrect API key provided: {given[:3]}***{given[-2:]}. You can find your "
                "API key at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key"))

    async def _generations(self, request: web.Request) -> web.StreamResponse:
        recorded = Recorded(request.method, request.path, dict(request.headers))
        try:
            await self.gate(request, recorded)
            if request.content_type != "application/json":
                raise ApiError(400, _error("Invalid Content-Type header "
                                           f"({request.content_type}), expected "
                                           "application/json."))
            body = await request.json()
            recorded.json = body
            return await self._respond(request, self._validate(body, edit=False), edit=False)
        except ApiError as exc:
            return web.json_response(exc.body, status=exc.status, headers=exc.headers)

    async def _edits(self, request: web.Request) -> web.StreamResponse:
        recorded = Recorded(request.method, request.path, dict(request.headers))
        try:
            await self.gate(request, recorded)
            if request.content_type != "multipart/form-data":
                raise ApiError(400, _error(
                    f"Invalid Content-Type header ({request.content_type}), expected "
                    "multipart/form-data. (HINT: If you're using curl, you can pass -F "
                    "'key=value' for each field.)"))
            await self._read_parts(request, recorded)
            body: dict[str, Any] = {k: v[-1] for k, v in recorded.fields.items()}
            if "n" in body:
                if not body["n"].isdigit():
                    raise ApiError(400, _error("Invalid type for 'n': expected an integer, "
                                               "but got a string instead.", param="n",
                                               code="invalid_type"))
                body["n"] = int(body["n"])
            for name in ("output_compression", "partial_images"):
                if name in body:
                    body[name] = int(body[name])
            if "stream" in body:
                body["stream"] = body["stream"] == "true"
            body.update({k: v for k, v in recorded.files.items()})
            return await self._respond(request, self._validate(body, edit=True), edit=True)
        except ApiError as exc:
            return web.json_response(exc.body, status=exc.status, headers=exc.headers)

    async def _read_parts(self, request: web.Request, recorded: Recorded) -> None:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, _error("Nested multipart bodies are not supported."))
            name = part.name or ""
            if part.filename is not None:
                if name not in _EDIT_FILES:
                    raise _unknown(name)
                data = await part.read()
                ctype = part.headers.get("Content-Type")
                if ctype not in ("image/png", "image/jpeg", "image/webp"):
                    raise ApiError(400, _error(
                        f"Invalid file '{name}': unsupported mimetype ('{ctype}'). Supported "
                        "file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
                        param=name, code="unsupported_file_mimetype"))
                recorded.files.setdefault(name, []).append(
                    Upload(bytes(data), part.filename, ctype))
            elif name in _EDIT_FILES:
                raise ApiError(400, _error(f"'{name}' must be a file upload.", param=name,
                                           code="invalid_type"))
            else:
                recorded.fields.setdefault(name, []).append(await part.text())

    def _validate(self, body: dict[str, Any], *, edit: bool) -> dict[str, Any]:
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            raise ApiError(400, _error("Missing required parameter: 'prompt'.", param="prompt",
                                       code="missing_required_parameter"))
        if edit and not (body.get("image") or body.get("image[]")):
            raise ApiError(400, _error("Missing required parameter: 'image'.", param="image",
                                       code="missing_required_parameter"))
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 10:
            raise ApiError(400, _error(f"Invalid value for 'n': {n}.", param="n",
                                       code="integer_above_max_value"))
        if BLOCKED_WORD in body["prompt"]:
            raise ApiError(400, _error(
                "Your request was rejected as a result of our safety system. Your request "
                "may contain content that is not allowed by our safety system.",
                "image_generation_user_error", code="moderation_blocked"))
        if self.compatible:
            return body
        model = body.get("model", "dall-e-2")
        spec = MODELS.get(model)
        if spec is None or (edit and not spec.edits):
            supported = [m for m, s in MODELS.items() if s.edits or not edit]
            raise _invalid("model", model, supported)
        allowed = _COMMON | (_GPT_ONLY if spec.gpt else {"response_format"})
        allowed |= {"style"} if model == "dall-e-3" else set()
        allowed |= ({"image", "image[]", "mask"} | ({"input_fidelity"} if spec.gpt else set())
                    ) if edit else set()
        for name in body:
            if name not in allowed:
                raise _unknown(name)
        if n > spec.max_n:
            raise ApiError(400, _error("You must provide n=1 for this model.", param="n"))
        size = body.get("size")
        if size is not None and not _size_ok(spec, size):
            raise _invalid("size", size, sorted(spec.sizes) if spec.sizes else None)
        if body.get("quality") is not None and body["quality"] not in spec.qualities:
            raise _invalid("quality", body["quality"], sorted(spec.qualities))
        images = [*body.get("image", []), *body.get("image[]", [])]
        if len(images) > spec.edits:
            raise ApiError(400, _error(f"Too many images: at most {spec.edits}.",
                                       param="image"))
        return body

    async def _respond(self, request: web.Request, body: Mapping[str, Any], *, edit: bool
                       ) -> web.StreamResponse:
        if body.get("stream"):
            return await self._stream(request, body, edit=edit)
        return self._answer(request, body)

    async def _stream(self, request: web.Request, body: Mapping[str, Any], *, edit: bool
                      ) -> web.StreamResponse:
        """Server-sent events as OpenAI streams images: ``partial_images`` previews,
        then one completed event per image (or an ``error`` event)."""
        prefix = "image_edit" if edit else "image_generation"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        common = {"background": "opaque", "output_format": "png",
                  "quality": body.get("quality", "medium"),
                  "size": body.get("size", "1024x1024")}

        async def send(event: str, data: Mapping[str, Any]) -> None:
            await response.write(f"event: {event}\ndata: ".encode()
                                 + json.dumps(data).encode() + b"\n\n")

        for index in range(body.get("partial_images", 0)):
            image = make_image((10 * index, 20, 200))
            self.partials.append(image)
            await send(f"{prefix}.partial_image", {
                "type": f"{prefix}.partial_image", "b64_json": base64.b64encode(image).decode(),
                "created_at": int(time.time()), "partial_image_index": index, **common})
        if self.stream_gate is not None:
            await self.stream_gate.wait()
        if self.stream_error is not None:
            await send("error", {"error": self.stream_error})
        else:
            for _ in range(body.get("n", 1)):
                await send(f"{prefix}.completed", {
                    "type": f"{prefix}.completed", "b64_json": self.b64(),
                    "created_at": int(time.time()), **common,
                    "usage": {"input_tokens": 50, "output_tokens": 1056, "total_tokens": 1106,
                              "input_tokens_details": {"image_tokens": 0, "text_tokens": 50}}})
        await response.write_eof()
        return response

    def _answer(self, request: web.Request, body: Mapping[str, Any]) -> web.Response:
        model = body.get("model", "dall-e-2")
        gpt = not self.compatible and MODELS[model].gpt
        as_b64 = gpt or body.get("response_format") == "b64_json"
        items = []
        for _ in range(body.get("n", 1)):
            item: dict[str, Any] = {"b64_json": self.b64()} if as_b64 else \
                {"url": self.image_url(request)}
            if self.compatible or model == "dall-e-3":
                item["revised_prompt"] = f"revised: {body['prompt']}"
            items.append(item)
        answer: dict[str, Any] = {"created": int(time.time()), "data": items}
        if gpt:
            answer.update({"background": "opaque", "output_format": "png",
                           "quality": body.get("quality", "medium"),
                           "size": body.get("size", "1024x1024"),
                           "usage": {"input_tokens": 50, "output_tokens": 1056,
                                     "total_tokens": 1106,
                                     "input_tokens_details": {"image_tokens": 0,
                                                              "text_tokens": 50}}})
        elif self.compatible:
            answer["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return web.json_response(answer)


def _size_ok(spec: ModelSpec, size: Any) -> bool:
    if not isinstance(size, str):
        return False
    if spec.sizes is not None:
        return size in spec.sizes
    if size == "auto":
        return True
    try:
        width, height = (int(x) for x in size.split("x"))
    except ValueError:
        return False
    return (width % 16 == 0 and height % 16 == 0 and 1 / 3 <= width / height <= 3
            and max(width, height) <= 3840 and width * height <= 3840 * 2160)
