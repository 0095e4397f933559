"""What the fake upstreams share: call counters, scripted HTTP failures, and a small
CDN serving the images they "generate".

These fakes answer over real HTTP as the providers' APIs do, to test adapters. To
test the pipeline or a surface without any upstream, use
:class:`muxproxy.testing.ScriptedProvider`, which answers from a function."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from PIL import Image

T = TypeVar("T")


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 40, 90)
        ) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def decodes(value: Any) -> bool:
    """True for raw base64 or a base64 ``data:`` URI holding bytes."""
    if not isinstance(value, str):
        return False
    payload = value.partition(",")[2] if value.startswith("data:") else value
    if value.startswith("data:") and ";base64" not in value.partition(",")[0]:
        return False
    try:
        return bool(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError):
        return False


def is_image_uri(value: Any) -> bool:
    """What upstreams take as an image reference: an http(s) URL or a base64 data URI."""
    return isinstance(value, str) and (value.startswith(("http://", "https://"))
                                       or (value.startswith("data:image/") and decodes(value)))


@dataclass
class Scripted:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class Fake:
    """Base for the fakes: ``counts[endpoint]`` counts every call received (failed ones
    too); ``fail(endpoint, ...)`` makes the next calls answer an error instead."""

    content_type = "application/json"

    def app(self) -> web.Application:
        raise NotImplementedError

    def __init__(self) -> None:
        #: Where the test server listens; set by the fixture that starts it.
        self.url = ""
        self.counts: Counter[str] = Counter()
        self.files: dict[str, bytes] = {}
        self._script: defaultdict[str, deque[Scripted]] = defaultdict(deque)

    def fail(self, endpoint: str, status: int, body: Any, *, times: int = 1,
             headers: dict[str, str] | None = None) -> None:
        for _ in range(times):
            self._script[endpoint].append(Scripted(status, body, headers or {}))

    def hit(self, endpoint: str) -> web.Response | None:
        """Count a call; the scripted failure to answer it with, if any."""
        self.counts[endpoint] += 1
        queue = self._script[endpoint]
        if not queue:
            return None
        scripted = queue.popleft()
        return self.json(scripted.body, status=scripted.status, headers=scripted.headers)

    def json(self, body: Any, *, status: int = 200,
             headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(text=json.dumps(body), status=status, headers=headers,
                            content_type=self.content_type)

    def add_file(self, origin: str, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{origin}/files/{name}"

    async def serve_file(self, request: web.Request) -> web.Response:
        self.counts["file"] += 1
        data = self.files.get(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="image/png")


async def serve(fake: Fake, start: Callable[[web.Application], Awaitable[Any]]) -> None:
    """Start ``fake`` with a server factory (pytest-aiohttp's ``aiohttp_server``)."""
    server = await start(fake.app())
    fake.url = f"http://{server.host}:{server.port}"


async def read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def origin(request: web.Request) -> str:
    return str(request.url.origin())


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    """Poll an observable condition until it yields something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.01)
