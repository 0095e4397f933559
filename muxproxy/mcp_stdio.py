"""``muxproxy mcp``: the MCP server on stdio, for agents that start their servers as
commands. It serves the same tools as the gateway's ``/mcp`` by forwarding each
call there, with the key from ``MUXPROXY_API_KEY``: the gateway does the work,
bills, limits and records it, and this process only relays (progress notifications
included; a call the agent cancels is cancelled there too, the job stays recorded).

The tool list and resource templates are served from this package, so an agent sees
the tools even while the gateway is down or the key is wrong; the call then answers
with a tool error that says which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from muxproxy import __version__
from muxproxy.surfaces.mcp_tools import INSTRUCTIONS, RESOURCE_TEMPLATES, TOOLS

# Generous: a call waits for its job up to the gateway's surfaces.mcp_wait_seconds.
READ_TIMEOUT_SECONDS = 600.0
CONNECT_TIMEOUT_SECONDS = 10.0


class GatewayUnreachable(Exception):
    """The gateway did not answer, or answered with an HTTP error before MCP began."""


class Bridge:
    def __init__(self, url: str, api_key: str) -> None:
        self.endpoint = url.rstrip("/") + "/mcp"
        self.api_key = api_key

    def server(self) -> Server[Any]:
        return Server("muxproxy", version=__version__, title="muxproxy image generation",
                      instructions=INSTRUCTIONS, on_list_tools=self._list_tools,
                      on_call_tool=self._call_tool, on_list_resources=self._list_resources,
                      on_list_resource_templates=self._list_templates,
                      on_read_resource=self._read_resource)

    @asynccontextmanager
    async def _remote(self) -> AsyncIterator[Client]:
        """A connection to the gateway for one call (its MCP endpoint is stateless, so
        nothing is lost between calls, and a restarted gateway is simply reached)."""
        timeout = httpx2.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
        headers = {"Authorization": f"Bearer {self.api_key}",
                   "User-Agent": f"muxproxy-mcp/{__version__}"}
        async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
            try:
                async with Client(streamable_http_client(self.endpoint, http_client=http),
                                  read_timeout_seconds=READ_TIMEOUT_SECONDS) as client:
                    yield client
            except BaseExceptionGroup as group:
                # The SDK's task groups wrap what failed the connection.
                leaf = _first_leaf(group)
                if not isinstance(leaf, MCPError | httpx2.HTTPError):
                    raise
                raise self._unreachable(leaf) from None
            except (MCPError, httpx2.HTTPError) as exc:
                raise self._unreachable(exc) from None

    def _unreachable(self, exc: MCPError | httpx2.HTTPError) -> GatewayUnreachable:
        if isinstance(exc, MCPError):
            return GatewayUnreachable(f"the gateway refused the call: {exc.error.message}")
        if isinstance(exc, httpx2.HTTPStatusError):
            return GatewayUnreachable(_http_error(exc.response))
        return GatewayUnreachable(f"cannot reach the muxproxy gateway at {self.endpoint} "
                                  f"({type(exc).__name__}: {exc}); is it running, and is "
                                  "MUXPROXY_URL right?")

    async def _list_tools(self, ctx: ServerRequestContext[Any],
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(TOOLS))

    async def _list_templates(self, ctx: ServerRequestContext[Any],
                              params: types.PaginatedRequestParams | None
                              ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=list(RESOURCE_TEMPLATES))

    async def _call_tool(self, ctx: ServerRequestContext[Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        async def forward(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        try:
            async with self._remote() as remote:
                return await remote.call_tool(params.name, params.arguments or {},
                                              progress_callback=forward)
        except (GatewayUnreachable, MCPError) as exc:
            return types.CallToolResult(content=[types.TextContent(text=_message(exc))],
                                        is_error=True)

    async def _list_resources(self, ctx: ServerRequestContext[Any],
                              params: types.PaginatedRequestParams | None
                              ) -> types.ListResourcesResult:
        try:
            async with self._remote() as remote:
                return await remote.list_resources()
        except GatewayUnreachable as exc:
            raise MCPError(types.INTERNAL_ERROR, str(exc)) from None

    async def _read_resource(self, ctx: ServerRequestContext[Any],
                             params: types.ReadResourceRequestParams
                             ) -> types.ReadResourceResult:
        try:
            async with self._remote() as remote:
                return await remote.read_resource(str(params.uri))
        except GatewayUnreachable as exc:
            raise MCPError(types.INTERNAL_ERROR, str(exc)) from None


def _http_error(response: httpx2.Response) -> str:
    """The gateway's own message from a refusal (a JSON-RPC error body on /mcp)."""
    try:
        body = response.json()
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.reason_phrase or "error"
    return f"the gateway refused the call: {message} (HTTP {response.status_code})"


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _message(exc: Exception) -> str:
    if isinstance(exc, MCPError):
        return f"the gateway answered with an error: {exc.error.message}"
    return str(exc)


async def serve(url: str, api_key: str) -> None:
    """Serve MCP on this process's stdin and stdout until the client closes them."""
    server = Bridge(url, api_key).server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
