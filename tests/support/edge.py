"""Raw-socket clients that misbehave at the HTTP edge: a request head that never
ends, requests left half-sent, a body trickled a byte at a time. Shared by the
edge tests and ``bench/edge.py``."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import orjson

CHUNK = 64 * 1024
HALF_SENT = (b"POST /api/v1/images/generations HTTP/1.1\r\nHost: gateway\r\n"
             b"Content-Type: application/json\r\n")


@dataclass(frozen=True)
class Answer:
    """What came back on one connection: the status (None: closed unanswered),
    the headers (names in lower case), the parsed JSON body when there was one,
    and how long it took."""

    status: int | None
    body: object = None
    seconds: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One response, read to its Content-Length; a connection closed or reset
    before a status line gives ``status=None``."""
    started = time.monotonic()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return Answer(None, seconds=time.monotonic() - started)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    try:
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
    except (asyncio.IncompleteReadError, ConnectionError):
        return Answer(status, seconds=time.monotonic() - started, headers=headers)
    body = orjson.loads(raw) if raw[:1] in (b"{", b"[") else raw
    return Answer(status, body, time.monotonic() - started, headers)


async def closed(reader: asyncio.StreamReader) -> None:
    """Until the server closes the connection (EOF or reset); what it sends is dropped."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(CHUNK):
            pass


async def huge_header(port: int, total: int, path: str = "/v1/models",
                      host: str = "127.0.0.1") -> tuple[Answer, int]:
    """A request whose one header carries ``total`` bytes, streamed in 64 KiB
    pieces; sending stops as soon as an answer arrives. Returns the answer and
    the bytes sent."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    answer = asyncio.create_task(read_answer(reader))
    sent = 0
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: gateway\r\nX-Filler: ".encode())
        piece = b"a" * CHUNK
        while sent < total and not answer.done():
            writer.write(piece)
            sent += CHUNK
            drain = asyncio.ensure_future(writer.drain())
            await asyncio.wait([drain, answer], return_when=asyncio.FIRST_COMPLETED)
            if not drain.done():
                drain.cancel()
            elif drain.exception() is not None:
                break  # reset by the server: what it answered is still in our buffer
        if not answer.done():
            writer.write(b"\r\n\r\n")
        result = await answer
    finally:
        answer.cancel()
        writer.transport.abort()
    return Answer(result.status, result.body, time.monotonic() - started,
                  result.headers), sent


@contextlib.asynccontextmanager
async def half_sent(port: int, count: int, host: str = "127.0.0.1"
                    ) -> AsyncIterator[list[asyncio.StreamReader]]:
    """``count`` connections, each holding a request head that never completes."""
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(HALF_SENT)
        writers.append(writer)
        readers.append(reader)

    try:
        for start in range(0, count, 100):
            await asyncio.gather(*(one() for _ in range(start, min(count, start + 100))))
        yield readers
    finally:
        for writer in writers:
            writer.transport.abort()


async def get(port: int, path: str, host: str = "127.0.0.1", timeout: float = 30.0) -> Answer:
    """A GET on a fresh connection, timed from connect to the end of the answer;
    ``status=None`` when the connection was refused, reset or timed out."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n"
                             f"Connection: close\r\n\r\n".encode())
                answer = await read_answer(reader)
            finally:
                writer.transport.abort()
    except (TimeoutError, ConnectionError):
        return Answer(None, seconds=time.monotonic() - started)
    return Answer(answer.status, answer.body, time.monotonic() - started, answer.headers)


def raise_own_open_files(needed: int) -> None:
    """Let this process hold ``needed`` sockets (its soft limit up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
