"""The HTTP edge's bounds: how large a request head may be, how long a client may
take to send it and its body, how long a kept-alive connection may idle, and how
many connections are served in full. The protocol in :mod:`muxproxy.server`
enforces them; this module holds the numbers, the phases a connection goes
through, and the canned answers it gives when a bound is hit.

Deadlines are not timers: each connection keeps the loop time its current phase
must end by, and one sweep a fraction of a second apart closes the ones past it.
A request then costs a few attribute writes instead of a timer to arm and cancel.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from enum import IntEnum

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from muxproxy.errors import MuxError
from muxproxy.settings import ServerSettings
from muxproxy.surfaces.registry import surface_for

# Over max_connections a connection may only ask for these; a probe's request
# head is tiny and sent at once, so it gets little room and little time.
HEALTH_URLS = frozenset({b"/healthz", b"/readyz"})
HEALTH_ONLY_HEAD_BYTES = 4096
HEALTH_ONLY_HEAD_SECONDS = 1.0
# After an error answer the connection stays open, unread, this long before it
# is closed: closing a socket with unread input resets it, and a reset can
# destroy the answer before the client has read it.
LINGER_SECONDS = 1.0


class Phase(IntEnum):
    FRESH = 0  # accepted, no byte yet: the head deadline runs from the accept
    IDLE = 1  # kept alive after a response, no byte of the next request yet
    HEAD = 2  # a request has begun, its head is incomplete
    BODY = 3  # the head is in, the body is still arriving
    BUSY = 4  # the request is in; the app is answering (the app's own deadlines apply)
    CLOSING = 5  # answered with an error; closed once the linger is over


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 120.0
    keepalive_timeout: float = 5.0
    max_connections: int = 4096

    @classmethod
    def from_settings(cls, server: ServerSettings) -> EdgeLimits:
        return cls(max_header_bytes=server.max_header_bytes,
                   header_timeout=server.header_timeout_seconds,
                   body_timeout=server.body_timeout_seconds,
                   keepalive_timeout=server.keepalive_timeout_seconds,
                   max_connections=server.max_connections)

    @property
    def sweep_interval(self) -> float:
        """A deadline is enforced at most this late: a quarter of the shortest one,
        between 50 ms and 1 s."""
        shortest = min(self.header_timeout, self.body_timeout, self.keepalive_timeout)
        return min(1.0, max(0.05, shortest / 4))


def path_of(url: bytes) -> str:
    """The path of a request target, complete or cut short (only its start picks
    the surface); "" when it is not in origin form."""
    if not url.startswith(b"/"):
        return ""
    return url[:256].partition(b"?")[0].decode("latin-1")


def error_answer(exc: MuxError, path: str) -> bytes:
    """A whole response, in the error shape of the surface ``path`` belongs to,
    that closes the connection."""
    response = surface_for(path).render_error(exc)
    parts = [STATUS_LINE[response.status_code]]
    for name, value in response.raw_headers:
        parts += [name, b": ", value, b"\r\n"]
    parts += [b"connection: close\r\n\r\n", bytes(response.body)]
    return b"".join(parts)


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as servers commonly do: the
    usual soft default of 1024 would refuse connections far below
    max_connections. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target
