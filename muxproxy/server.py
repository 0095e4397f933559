"""uvicorn's server, telling the app the moment a stop signal arrives, and its
HTTP protocol, sending what a pass of the loop writes in one go.

On SIGTERM uvicorn stops accepting connections and lets the requests in flight
finish; only then does the app hear of it (lifespan shutdown). Until then the
scheduler would go on starting new jobs that the stop will cut off, and requests
waiting for a job would be cut off unanswered when the grace period runs out.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything made so far (modules, settings, the app) lives as long as the
        # process: keep it out of the cyclic collector's passes, which otherwise
        # walk it again and again under load (a tenth of the CPU, measured), and
        # let the young generation grow larger before it is collected.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and not self._loop.is_closed():
            # A signal handler runs between two bytecodes of whatever the loop was
            # doing: hand the work to the loop rather than do it here.
            self._loop.call_soon_threadsafe(self._on_signal)


class _CoalescingTransport:
    """A transport whose writes wait for the end of the loop's pass, then leave
    together. uvicorn writes a response's head and its body separately: two
    system calls and two TCP segments for every small response, where one does."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`_CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing: Any = _CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)
