"""A server of reference images on a loopback address, for the gateway to fetch.

``/image.png`` is a real PNG; ``/redirect?to=URL`` answers 302 to ``to``; ``/loop``
redirects to itself; ``/big?mb=N`` streams N MiB without a Content-Length and
counts what it managed to send; ``/held.png`` answers once :meth:`release` is called.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web

from muxproxy.providers.base import Call, Provider, SubmitOutcome
from tests.support.images import png_bytes

# The gateway setting that lets tests fetch from this server (public only otherwise).
ALLOW_LOOPBACK = {"limits": {"reference_allow_networks": ["127.0.0.0/8", "::1/128"]}}


class ImageServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.image = png_bytes(40, 30)
        self.paths: list[str] = []
        self.big_sent = 0
        self.big_done = asyncio.Event()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> ImageServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_get("/image.png", self._image)
        app.router.add_get("/held.png", self._held)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/loop", self._loop)
        app.router.add_get("/big", self._big)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/image.png", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def release(self) -> None:
        self._released.set()

    async def _image(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        return web.Response(body=self.image, content_type="image/png")

    async def _held(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        await self._released.wait()
        return web.Response(body=self.image, content_type="image/png")

    async def _redirect(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        # Raw, as a hostile server would send it (HTTPFound would parse it first).
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def _loop(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        raise web.HTTPFound("/loop")

    async def _big(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path_qs)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = self.image + bytes(64 * 1024)
        total = int(request.query.get("mb", "64")) * 1024 * 1024
        try:
            while self.big_sent < total:
                await response.write(chunk)
                self.big_sent += len(chunk)
            await response.write_eof()
        except ConnectionError:
            pass
        finally:
            self.big_done.set()
        return response


def allow(*networks: str) -> dict[str, Any]:
    return {"limits": {"reference_allow_networks": list(networks)}}


def record_calls(provider: Provider) -> list[Call]:
    """Every Call the runner hands ``provider``: the references as they reached it
    (the uploads themselves are deleted once the job ends)."""
    calls: list[Call] = []
    submit = provider.submit

    async def recording(call: Call) -> SubmitOutcome:
        calls.append(call)
        return await submit(call)

    provider.submit = recording  # type: ignore[method-assign]
    return calls
