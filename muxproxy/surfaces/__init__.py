"""The HTTP surfaces: one module per client-facing API, put together in
:mod:`muxproxy.surfaces.registry`."""

from __future__ import annotations

from enum import StrEnum


class SurfaceName(StrEnum):
    """Each surface's name. A job records the one that created it (native, openai,
    modelmux or mcp); the callback's payload and the polling answers do not depend on it."""

    NATIVE = "native"  # the native task API (docs/native-api.md)
    CALLBACKS = "callbacks"  # webhook management, in the native shape
    OPENAI = "openai"  # the OpenAI-compatible images API (docs/openai-api.md)
    MODELMUX = "modelmux"  # the ModelMux-style generations API (docs/modelmux-api.md)
    MCP = "mcp"  # the MCP server's Streamable HTTP endpoint (docs/mcp.md)
    ADMIN = "admin"  # keys, credits and usage, behind the admin token
    FILES = "files"  # signed downloads of result images
    OPS = "ops"  # liveness, readiness, metrics and the OpenAPI document
    CONSOLE = "console"  # the web console (docs/console.md); its playground creates jobs
