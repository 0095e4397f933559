"""uvicorn's server, telling the app the moment a stop signal arrives, and its
HTTP protocol, sending what a pass of the loop writes in one go and holding each
connection to the edge's bounds (:mod:`muxproxy.edge`).

On SIGTERM uvicorn stops accepting connections and lets the requests in flight
finish; only then does the app hear of it (lifespan shutdown). Until then the
scheduler would go on starting new jobs that the stop will cut off, and requests
waiting for a job would be cut off unanswered when the grace period runs out.
"""

from __future__ import annotations

import asyncio
import gc
import math
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any, ClassVar, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from muxproxy.edge import (
    HEALTH_ONLY_HEAD_BYTES,
    HEALTH_ONLY_HEAD_SECONDS,
    HEALTH_URLS,
    LINGER_SECONDS,
    EdgeLimits,
    Phase,
    error_answer,
    path_of,
)
from muxproxy.errors import HeaderTooLarge, MuxError, RequestTimeout, ServiceUnavailable


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None],
                 edge: EdgeLimits | None = None, lifeline_fd: int | None = None) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        # Under a supervisor (muxproxy.workers): the read end of a pipe that ends when
        # the supervisor does, whatever killed it; the worker then stops as on SIGTERM.
        self._lifeline_fd = lifeline_fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._edge = edge or EdgeLimits()
        self._sweeper: asyncio.TimerHandle | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything made so far (modules, settings, the app) lives as long as the
        # process: keep it out of the cyclic collector's passes, which otherwise
        # walk it again and again under load (docs/performance.md), and
        # let the young generation grow larger before it is collected.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        self._sweep()
        if self._lifeline_fd is not None:
            asyncio.get_running_loop().add_reader(self._lifeline_fd, self._orphaned)

    def _orphaned(self) -> None:
        assert self._lifeline_fd is not None
        asyncio.get_running_loop().remove_reader(self._lifeline_fd)
        self.handle_exit(signal.SIGTERM, None)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Deadlines hold while the connections in flight drain.
        await super().shutdown(sockets)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in tuple(self.server_state.connections):
            if isinstance(connection, HttpProtocol) and connection.deadline <= now:
                connection.deadline_passed()
        self._sweeper = loop.call_later(self._edge.sweep_interval, self._sweep)

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

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)



class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`_CoalescingTransport`, held to the
    edge's bounds. uvicorn bounds none of them for httptools: the parser buffers
    a head of any size, and a connection may take forever to send it."""

    edge: ClassVar[EdgeLimits] = EdgeLimits()

    @classmethod
    def bounded(cls, edge: EdgeLimits) -> type[HttpProtocol]:
        """This protocol under ``edge`` (uvicorn builds protocols from a class)."""
        return cast(type[HttpProtocol], type(cls.__name__, (cls,), {"edge": edge}))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing: Any = _CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)
        self.url = b""
        self._head_bytes = 0
        self._heads = 0
        self._phase = Phase.FRESH
        # Over the limit the connection is kept only long enough to see whether it
        # is a health probe: no app task runs for anything else.
        self._health_only = len(self.connections) > self.edge.max_connections
        self._head_limit = self.edge.max_header_bytes
        head_timeout = self.edge.header_timeout
        if self._health_only:
            self._head_limit = min(self._head_limit, HEALTH_ONLY_HEAD_BYTES)
            head_timeout = min(head_timeout, HEALTH_ONLY_HEAD_SECONDS)
        self.deadline = self.loop.time() + head_timeout

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is Phase.BODY:
            super().data_received(data)
        elif phase is not Phase.CLOSING:
            # Whatever arrives outside a body belongs to a request head.
            room = self._head_limit - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                super().data_received(data)
            else:
                self._feed_past_room(data, room)

    def _feed_past_room(self, data: bytes, room: int) -> None:
        """Feed only what fits; a head still incomplete then is too large, and the
        rest is never buffered. When a head completes in time and the next one
        (pipelined) begins in the same piece, that one's bytes in the piece go
        uncounted: it may pass the limit by at most one read before it is refused."""
        while True:
            heads = self._heads
            self._head_bytes += room
            if room > 0:
                super().data_received(data[:room])
            if self._phase is Phase.CLOSING or self.transport.is_closing():
                return
            if self._heads == heads:
                self._refuse_head(HeaderTooLarge(
                    f"request head exceeds the {self._head_limit} byte limit"))
                return
            data = data[room:]
            room = self._head_limit - self._head_bytes
            if self._phase is Phase.BODY or len(data) <= room:
                self.data_received(data)
                return

    def on_message_begin(self) -> None:
        if self._phase is not Phase.CLOSING:
            if self._phase is not Phase.FRESH:
                self.deadline = self.loop.time() + self.edge.header_timeout
            self._phase = Phase.HEAD
        # Even when refusing: the headers that follow go to a fresh list, never
        # to the scope of a request still being answered.
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._phase is Phase.CLOSING:
            return
        self._heads += 1
        self._phase = Phase.BODY
        self.deadline = self.loop.time() + self.edge.body_timeout
        if self._health_only and (self._heads > 1
                                  or self.url.partition(b"?")[0] not in HEALTH_URLS):
            self._refuse_head(ServiceUnavailable(
                "the gateway has too many open connections; retry shortly", retry_after=1))
            return
        super().on_headers_complete()
        if self._health_only:
            self.cycle.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self._phase is not Phase.CLOSING:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._phase is Phase.CLOSING:
            return
        super().on_message_complete()
        self._head_bytes = 0
        if self.cycle.response_complete:  # answered before its body was in
            self._idle()
        else:
            self._phase = Phase.BUSY
            self.deadline = math.inf

    def on_response_complete(self) -> None:
        # uvicorn's, less its keep-alive timer: the sweep closes idle connections.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._phase is Phase.BUSY:
            self._idle()

    def _idle(self) -> None:
        self._phase = Phase.IDLE
        self.deadline = self.loop.time() + self.edge.keepalive_timeout

    def shutdown(self) -> None:
        cycle = self.cycle
        if self._phase is Phase.CLOSING and (
                cycle is None or cycle.response_complete or cycle.disconnected):
            self.transport.close()  # only the linger was left
        else:
            super().shutdown()

    def deadline_passed(self) -> None:
        """Called by the server's sweep once :attr:`deadline` is past."""
        phase, cycle = self._phase, self.cycle
        if self.transport.is_closing():
            return
        if phase is Phase.HEAD:
            self._refuse_head(RequestTimeout(
                f"request head not received within {self.edge.header_timeout:g} s"))
        elif phase is Phase.BODY and cycle is not None and not self.pipeline \
                and not cycle.response_started:
            cycle.disconnected = True  # the app's reads end and its answer is dropped
            cycle.message_event.set()
            self._answer_and_close(RequestTimeout(
                f"request body not received within {self.edge.body_timeout:g} s"),
                self.scope["path"])
        else:
            # Nothing was asked (FRESH, IDLE), it was answered (CLOSING), or an
            # answer is already under way and can no longer change.
            self.transport.close()

    def _refuse_head(self, exc: MuxError) -> None:
        """Refuse the request whose head is arriving. Behind a response still being
        written (pipelining) no answer can be slipped in: the connection closes
        once that response is out."""
        previous = self.cycle
        if previous is None or previous.response_complete:
            self._answer_and_close(exc, path_of(self.url))
            return
        previous.keep_alive = False
        self._phase = Phase.CLOSING
        self.deadline = math.inf
        self.transport.pause_reading()

    def _answer_and_close(self, exc: MuxError, path: str) -> None:
        self._phase = Phase.CLOSING
        self.deadline = self.loop.time() + LINGER_SECONDS
        self.transport.write(error_answer(exc, path))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.pause_reading()
