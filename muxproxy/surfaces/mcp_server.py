"""The MCP server itself: the official SDK's low-level ``Server`` with the
gateway's tools and resources, and the session manager that serves it statelessly
over HTTP. Imported on the first ``/mcp`` call (``surfaces/mcp.py``): the SDK and
what it brings cost a process about 35 MB, which a gateway no agent calls keeps.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from muxproxy import __version__
from muxproxy.app_state import AppState
from muxproxy.auth import presented_key
from muxproxy.errors import MuxError, Unauthorized
from muxproxy.settings import Settings
from muxproxy.surfaces.mcp_calls import McpCalls, error_text
from muxproxy.surfaces.mcp_tools import INSTRUCTIONS, RESOURCE_TEMPLATES, TOOLS


class McpServer:
    """The SDK server and the session manager that serves it over HTTP; run by the
    app's lifespan (:meth:`run`)."""

    def __init__(self, settings: Settings) -> None:
        self.server: Server[Any] = Server(
            "muxproxy", version=__version__, title="muxproxy image generation",
            instructions=INSTRUCTIONS, on_list_tools=self._list_tools,
            on_call_tool=self._call_tool, on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource)
        self.manager = StreamableHTTPSessionManager(
            app=self.server, stateless=True,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=settings.limits.max_body_bytes)

    def run(self) -> AbstractAsyncContextManager[None]:
        return self.manager.run()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.manager.handle_request(scope, receive, send)

    async def _list_tools(self, ctx: ServerRequestContext[Any],
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(TOOLS))

    async def _list_templates(self, ctx: ServerRequestContext[Any],
                              params: types.PaginatedRequestParams | None
                              ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=list(RESOURCE_TEMPLATES))

    async def _call_tool(self, ctx: ServerRequestContext[Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            calls = await _calls(ctx)
        except MuxError as exc:
            return types.CallToolResult(content=[types.TextContent(text=error_text(exc))],
                                        is_error=True)

        async def progress(done: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(done, total, message)

        return await calls.call(params.name, params.arguments or {}, progress)

    async def _list_resources(self, ctx: ServerRequestContext[Any],
                              params: types.PaginatedRequestParams | None
                              ) -> types.ListResourcesResult:
        try:
            return await (await _calls(ctx)).resources()
        except MuxError as exc:
            raise MCPError(types.INVALID_REQUEST, error_text(exc)) from None

    async def _read_resource(self, ctx: ServerRequestContext[Any],
                             params: types.ReadResourceRequestParams
                             ) -> types.ReadResourceResult:
        try:
            return await (await _calls(ctx)).read(str(params.uri))
        except MuxError as exc:
            # The spec's code for a resource that is not there, with its URI.
            raise MCPError(types.INVALID_PARAMS, error_text(exc),
                           {"uri": str(params.uri)}) from None


async def _calls(ctx: ServerRequestContext[Any]) -> McpCalls:
    """The calling key's tools, from the request the message came in: the endpoint
    checked it, and a key revoked since is refused here."""
    request = ctx.request
    if not isinstance(request, Request):
        raise Unauthorized("the MCP endpoint needs an HTTP request with an API key")
    state: AppState = request.app.state.mux
    presented = presented_key(request)
    found = await state.auth.lookup(presented) if presented else None
    if found is None or found.revoked_at is not None:
        raise Unauthorized("invalid API key")
    return McpCalls(state, found)
