"""uvicorn's server, telling the app the moment a stop signal arrives.

On SIGTERM uvicorn stops accepting connections and lets the requests in flight
finish; only then does the app hear of it (lifespan shutdown). Until then the
scheduler would go on starting new jobs that the stop will cut off, and requests
waiting for a job would be cut off unanswered when the grace period runs out.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and not self._loop.is_closed():
            # A signal handler runs between two bytecodes of whatever the loop was
            # doing: hand the work to the loop rather than do it here.
            self._loop.call_soon_threadsafe(self._on_signal)
