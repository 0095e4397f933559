"""The MCP server over Streamable HTTP at ``/mcp`` (docs/mcp.md), built on the
official SDK's low-level ``Server`` and its session manager (``mcp_server.py``,
loaded and started on the first call, and stopped with the app).

Every HTTP request is authenticated here with the gateway's API keys before the SDK
sees it (401 as a JSON-RPC error otherwise), then served statelessly: no MCP
session outlives its request, so nothing ties a key's calls to this process and no
session id can be borrowed by another key. The tools find the key again from the
request's own headers (the lookup is cached), and call the service layer for it, as
every other surface does. The SDK's DNS-rebinding check is off: it guards servers
that trust whoever can reach them, and every request here carries its key.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from muxproxy.app_state import AppState
from muxproxy.errors import MuxError
from muxproxy.http import JSONResponse
from muxproxy.http import with_retry_after as _retry_after
from muxproxy.settings import Settings

if TYPE_CHECKING:
    from muxproxy.surfaces.mcp_server import McpServer

# JSON-RPC's range for server-defined errors; the HTTP status says which one.
SERVER_ERROR = -32000


def render_error(exc: MuxError) -> Response:
    """A refusal before the MCP server runs (a key, a route): a JSON-RPC error with
    the HTTP status, the gateway's message and its stable code."""
    error = {"code": SERVER_ERROR, "message": exc.message,
             "data": {"status": exc.status, "type": exc.code}}
    return _retry_after(JSONResponse({"jsonrpc": "2.0", "id": None, "error": error},
                                     status_code=exc.status), exc)


class McpHost:
    """Starts the MCP server on the first ``/mcp`` call and stops it with the app.

    The session manager's ``run()`` holds a task group, which must be left by the
    task that entered it: a task of its own holds it open until :meth:`aclose`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._server: McpServer | None = None
        self._starting = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self._server or await self._start()
        await server.handle(scope, receive, send)

    async def _start(self) -> McpServer:
        async with self._starting:
            if self._server is None:
                from muxproxy.surfaces.mcp_server import McpServer

                server = McpServer(self.settings)
                running = asyncio.get_running_loop().create_future()
                self._task = asyncio.create_task(self._hold(server, running),
                                                 name="mcp server")
                await running
                self._server = server
        return self._server

    async def _hold(self, server: McpServer, running: asyncio.Future[None]) -> None:
        try:
            async with server.run():
                running.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not running.done():
                running.set_exception(exc)
            raise

    async def aclose(self) -> None:
        """Stop the server, letting calls still waiting answer first."""
        self._stop.set()
        if self._task is not None:
            await self._task


class McpEndpoint:
    """``/mcp``: the key checked like on every surface, then the SDK's transport."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        state: AppState = request.app.state.mux
        try:
            await state.auth.authenticate(request)
        except MuxError as exc:
            await render_error(exc)(scope, receive, send)
            return
        await state.mcp.handle(scope, receive, send)


# POST only: stateless, there is no server-to-client stream to GET and no session to
# DELETE; a 405 there is what the transport's spec asks of such a server.
routes = [Route("/mcp", McpEndpoint(), methods=["POST"])]
