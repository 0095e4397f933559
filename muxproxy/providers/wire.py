"""Reading what an upstream answered: bounded bodies, and the message inside an
error body, wherever the upstream keeps it.

Every adapter reads error answers the same way (:func:`read_answer`, at most
``MAX_ERROR_BODY``) and names only the places its upstream writes the message,
as dotted paths (``"error.message"``, ``"detail"``); :func:`message_at` takes the
first one found.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

# Enough of an error body to find the provider's message; a longer one is not read.
MAX_ERROR_BODY = 64 * 1024
# How much of an error page that is not JSON is shown (an HTML 502 from a proxy).
SNIPPET_CHARS = 300


@dataclass(frozen=True)
class Answer:
    """A response body: its JSON when it is JSON (``json``), else its text (``text``).
    Both are empty when the body was too long, cut, or absent."""

    json: Any = None
    text: str = ""

    @property
    def snippet(self) -> str:
        """The start of a body that is not JSON, on one line."""
        return clip(self.text)


def clip(text: str, limit: int = SNIPPET_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytearray | None:
    """The body, or None as soon as it proves longer than ``limit`` bytes (the rest
    is never read, so an endless or huge body costs at most ``limit`` of memory)."""
    if (response.content_length or 0) > limit:
        return None
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            return None
    return data


async def read_answer(response: aiohttp.ClientResponse, limit: int = MAX_ERROR_BODY
                      ) -> Answer:
    """The body as JSON or text, at most ``limit`` bytes of it. A connection lost
    while reading is raised (``Provider.call`` maps it)."""
    raw = await read_limited(response, limit)
    if raw is None:
        return Answer()
    try:
        return Answer(json=json.loads(raw))
    except (ValueError, UnicodeDecodeError):
        return Answer(text=raw.decode("utf-8", "replace"))


async def read_error(response: aiohttp.ClientResponse) -> Answer:
    """An error response's body; one that cannot be read is an empty answer, so the
    error is still classified by its HTTP status."""
    try:
        return await read_answer(response)
    except (aiohttp.ClientError, asyncio.IncompleteReadError, TimeoutError):
        return Answer()


def message_at(body: Any, paths: Sequence[str]) -> str | None:
    """The first message found at one of the dotted ``paths`` of a JSON body.

    A string is taken as it is; a list of ``{loc, msg, type}`` (the 422 validation
    errors of FastAPI-style APIs: fal, BFL) is joined into one line."""
    for path in paths:
        value = body
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and (joined := validation_errors(value)):
            return joined
    return None


def validation_errors(items: list[Any]) -> str:
    """``[{"loc": ["body", "width"], "msg": "..."}]`` as ``"width: ..."``, ``; ``-joined."""
    messages = []
    for item in items:
        if not isinstance(item, dict):
            continue
        loc = item.get("loc")
        where = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else ""
        msg = str(item.get("msg") or item.get("type") or "invalid input")
        messages.append(f"{where}: {msg}" if where else msg)
    return "; ".join(messages)
