"""One callback attempt over HTTP: POST, bounded in time, redirects not followed.

Transport failures are mapped here, once, to an :class:`Reply` with a short
error; nothing from aiohttp leaks further, and no URL (whose path or query may
carry the receiver's token) lands in an error text.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from muxproxy import __version__
from muxproxy.webhooks.ssrf import CallbackGuard, GuardedResolver, RefusedAddress
from muxproxy.webhooks.ssrf import guarded_socket_factory as _socket_factory

PREVIEW_BYTES = 512
USER_AGENT = f"muxproxy-webhooks/{__version__}"


@dataclass(frozen=True)
class Reply:
    latency_ms: int
    status: int | None = None
    error: str | None = None
    # The first bytes of the response body, as text.
    preview: str | None = None
    retry_after: str | None = None

    @property
    def result(self) -> str:
        """A metrics label: 2xx..5xx, or what went wrong before a status came."""
        if self.status is not None:
            return f"{self.status // 100}xx"
        return (self.error or "error").split(":", 1)[0].replace(" ", "_")


class Sender:
    def __init__(self, guard: CallbackGuard, timeout_seconds: float,
                 max_connections: int) -> None:
        self.guard = guard
        self.timeout = timeout_seconds
        self.max_connections = max_connections
        self._started = False
        # One session per set of extra networks granted (keys with a grant): the
        # address checks live in a connector, so a key's grant never reaches the
        # connections other keys' callbacks use.
        self._sessions: dict[tuple[str, ...], aiohttp.ClientSession] = {}

    async def start(self) -> None:
        self._started = True
        self._session_for(())

    def _session_for(self, allow: tuple[str, ...]) -> aiohttp.ClientSession:
        session = self._sessions.get(allow)
        if session is None:
            policy = self.guard.policy.widened(allow)
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self.guard.resolver, policy),
                socket_factory=_socket_factory(policy), limit=self.max_connections)
            session = self._sessions[allow] = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                headers={"User-Agent": USER_AGENT})
        return session

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        self._started = False
        for session in sessions:
            await session.close()

    async def post(self, url: str, body: bytes, headers: dict[str, str],
                   allow: tuple[str, ...] = ()) -> Reply:
        """POST once; ``allow`` holds the networks granted to the delivery's key."""
        if not self._started:
            raise RuntimeError("sender is not started")
        session = self._session_for(allow)
        started = time.perf_counter()

        def reply(**kw: Any) -> Reply:
            return Reply(latency_ms=round((time.perf_counter() - started) * 1000), **kw)

        try:
            async with asyncio.timeout(self.timeout), session.post(
                    url, data=body, allow_redirects=False,
                    headers={"Content-Type": "application/json", **headers}) as resp:
                return reply(status=resp.status, preview=await _preview(resp),
                             retry_after=resp.headers.get("Retry-After"))
        except TimeoutError:
            return reply(error=f"timeout: no response within {self.timeout:g} s")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                return reply(error=str(exc.os_error))
            code = exc.os_error.errno
            reason = os.strerror(code) if code else "connection failed"
            return reply(error=f"connect_error: {reason.lower()}")
        except RefusedAddress as exc:
            return reply(error=str(exc))
        except aiohttp.ServerDisconnectedError:
            return reply(error="disconnected: the receiver closed the connection")
        except aiohttp.ClientError as exc:
            return reply(error=f"error: {type(exc).__name__}")


async def _preview(resp: aiohttp.ClientResponse) -> str | None:
    data = bytearray()
    while len(data) < PREVIEW_BYTES:
        chunk = await resp.content.read(PREVIEW_BYTES - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace") or None
