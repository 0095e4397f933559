"""The MCP endpoint (``surfaces/mcp.py``): MCP's Streamable HTTP transport, JSON-RPC
messages in and out; its tools are described by the protocol (``tools/list``) and in
docs/mcp.md, not here."""

from __future__ import annotations

from muxproxy.openapi.common import API_KEY, Part, answer, errors, json_body, obj, operation
from muxproxy.settings import Settings

TAG = "MCP"
SHAPE = "McpError"
_DESCRIPTION = ("MCP's Streamable HTTP transport (protocol revisions 2025-11-25 and "
                "2026-07-28), served statelessly. Send JSON-RPC messages with "
                "'Accept: application/json, text/event-stream'. Tools: generate_image, "
                "edit_image, get_generation, list_models, get_balance (docs/mcp.md).")
_ERRORS = {401: "missing or invalid API key (a JSON-RPC error, before the MCP server runs)."}


def part(settings: Settings) -> Part:
    message = {"type": "object", "description": "A JSON-RPC 2.0 message (MCP)."}
    stream = answer("A JSON-RPC response, as JSON or as an event stream with progress "
                    "notifications first.", message)
    stream["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    post = operation("Send an MCP message", TAG, {"200": stream,
                                                  "202": answer("A notification, accepted."),
                                                  **errors(SHAPE, _ERRORS)},
                     security=API_KEY, body=json_body(message), description=_DESCRIPTION,
                     operation_id="mcpPost")
    error = obj({"jsonrpc": {"const": "2.0"}, "id": {"type": "null"},
                 "error": obj({"code": {"type": "integer"}, "message": {"type": "string"},
                               "data": {"type": "object"}}, ["code", "message"],
                              closed=False)},
                ["jsonrpc", "error"], closed=False)
    return Part(paths={"/mcp": {"post": post}}, schemas={SHAPE: error})
