"""A lean HTTP/1.1 load generator: keep-alive connections driven by asyncio
protocols, requests pre-encoded as bytes, responses parsed just enough (status,
Content-Length or chunked body). A general client (aiohttp, httpx) spends more CPU
per request than the servers measured here, and the load generator shares the two
cores with them: the leaner it is, the more the figures say about the server.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson


class HTTPError(Exception):
    pass


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        _, protocol = await asyncio.get_running_loop().create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HTTPError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        parsed = _parse(self.buffer)
        if parsed is not None:
            status, body, used = parsed
            del self.buffer[:used]
            self.waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        if self.transport.is_closing():
            raise HTTPError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _parse(buf: bytearray) -> tuple[int, bytes, int] | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    start = end + 4
    marker = head.find(b"\r\ncontent-length:")
    if marker >= 0:
        stop = head.find(b"\r\n", marker + 2)
        length = int(head[marker + 17:stop if stop >= 0 else len(head)])
        if len(buf) < start + length:
            return None
        return status, bytes(buf[start:start + length]), start + length
    if b"\r\ntransfer-encoding: chunked" in head:
        body = bytearray()
        pos = start
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            if len(buf) < line_end + 2 + size + 2:
                return None
            body += buf[line_end + 2:line_end + 2 + size]
            pos = line_end + 2 + size + 2
            if size == 0:
                return status, bytes(body), pos
    return status, b"", start  # no body (e.g. 204)


def encode(method: str, host: str, port: int, path: str,
           headers: Mapping[str, str] | None = None, body: object = None) -> bytes:
    """A complete HTTP/1.1 request; ``body`` is JSON-encoded unless it is bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    data = b""
    if body is not None:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


@dataclass
class Run:
    """One load run: per-request latencies (s) and the wall time of the whole."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    errors: int = 0
    first_error: str | None = None
    bodies: list[bytes] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(host: str, port: int, request: Callable[[int], bytes], total: int,
                concurrency: int, *, ok: Callable[[int, bytes], bool] | None = None,
                keep_bodies: bool = False) -> Run:
    """Send ``total`` requests over ``concurrency`` connections, as fast as they answer.

    ``request(i)`` builds the i-th request. A request answered outside 2xx (or
    refused by ``ok``) counts as an error, and its latency is not kept.
    """
    check = ok or (lambda status, _: 200 <= status < 300)
    counter = itertools.count()
    run = Run()
    conns = [await Connection.open(host, port) for _ in range(min(concurrency, total))]

    async def worker(conn: Connection) -> None:
        while (i := next(counter)) < total:
            started = time.perf_counter()
            try:
                status, body = await conn.request(request(i))
            except HTTPError as exc:
                run.errors += 1
                run.first_error = run.first_error or str(exc)
                conn = await Connection.open(host, port)
                continue
            if check(status, body):
                run.latencies.append(time.perf_counter() - started)
                if keep_bodies:
                    run.bodies.append(body)
            else:
                run.errors += 1
                run.first_error = run.first_error or f"HTTP {status}: {body[:200]!r}"
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    run.elapsed = time.perf_counter() - started
    return run


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
