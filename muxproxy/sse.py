"""Server-sent events, both ways: reading an upstream's stream (OpenAI's image
streaming) and writing one to a client (the OpenAI surface's ``stream: true``).

Only what these streams use: ``event:`` and ``data:`` fields, events ending at a
blank line; comments and other fields are skipped. Reading is by chunk, not by
line: a partial image is one ``data:`` line of megabytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class Event:
    event: str
    data: str


class TooLarge(Exception):
    """The stream sent more than the reader's limit."""


async def read_events(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[Event]:
    """The events of a byte stream; :class:`TooLarge` once it passes ``limit`` bytes
    in all (a stream never ending costs at most that much memory)."""
    buffer = bytearray()
    total = 0
    name, data = "", list[str]()
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise TooLarge(limit)
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end]).rstrip(b"\r").decode("utf-8", "replace")
            del buffer[:end + 1]
            if not line:
                if data or name:
                    yield Event(name or "message", "\n".join(data))
                name, data = "", []
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    if data:
        yield Event(name or "message", "\n".join(data))


def encode(event: str, data: Any) -> bytes:
    """One event as written on the wire: its type, its JSON, a blank line."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
