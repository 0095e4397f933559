"""MCP clients of a running gateway, with the SDK's own ``Client``: over Streamable
HTTP at ``/mcp``, or over stdio through a ``muxproxy mcp`` child process."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.support.gateway import RunningGateway

# "http-2025": the same endpoint with the 2025-11-25 initialize handshake, as most
# desktop clients still speak it; the others negotiate 2026-07-28.
TRANSPORTS = ["http", "http-2025", "stdio"]
ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def mcp_client(gateway: RunningGateway, key: str, transport: str) -> AsyncIterator[Client]:
    if transport.startswith("http"):
        headers = {"Authorization": f"Bearer {key}"}
        mode = "legacy" if transport == "http-2025" else "auto"
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
                Client(streamable_http_client(f"{gateway.url}/mcp", http_client=http),
                       mode=mode) as client:
            assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
            yield client
        return
    env = {"MUXPROXY_URL": gateway.url, "MUXPROXY_API_KEY": key,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    params = StdioServerParameters(command=sys.executable, args=["-m", "muxproxy.cli", "mcp"],
                                   env=env, cwd=str(ROOT))
    async with Client(params) as client:
        yield client
