"""``Idempotency-Key`` on every create call, as plain ASGI middleware.

The first request with a key runs and, if it succeeds, its response is kept; a
retry with the same key and the same body gets that response again (marked
``Idempotent-Replayed: true``) and creates nothing. The same key with another
body is refused with 422, and a retry while the first is still running with 409.
Keys belong to the API key that sent them and expire after
``limits.idempotency_ttl_seconds``. Failed requests are not kept: a retry runs.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from muxproxy.app_state import AppState
from muxproxy.auth import presented_key
from muxproxy.clock import now_ms
from muxproxy.errors import Conflict, InternalError, InvalidRequest, MuxError, Unprocessable
from muxproxy.logs import get_logger
from muxproxy.middleware import header
from muxproxy.store.accounts import IdempotentResponse
from muxproxy.surfaces.shapes import renderer_for

log = get_logger("muxproxy.idempotency")

CREATE_PATHS = frozenset({"/api/v1/images/generations", "/api/v1/generations",
                          "/v1/images/generations", "/v1/images/edits"})


class Idempotency:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        idem_key = None
        if scope["type"] == "http" and scope["method"] == "POST" \
                and scope["path"] in CREATE_PATHS:
            idem_key = header(scope, b"idempotency-key")
        if idem_key is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._handle(scope, receive, tracking, idem_key)
        except MuxError as exc:  # the database refused its record: 503, Retry-After
            if not started:
                await self._refuse(scope, receive, send, exc)
        except Exception:
            # Like every endpoint: logged, and a 500 in the surface's own shape.
            log.exception("idempotency failed", path=scope["path"])
            if not started:
                await self._refuse(scope, receive, send, InternalError("internal server error"))

    async def _handle(self, scope: Scope, receive: Receive, send: Send,
                      idem_key: str) -> None:
        request = Request(scope)
        if not 1 <= len(idem_key) <= 255:
            await self._refuse(scope, receive, send, InvalidRequest(
                "Idempotency-Key must be 1 to 255 characters", param="Idempotency-Key"))
            return
        state: AppState = scope["app"].state.mux
        presented = presented_key(request)
        key = await state.auth.lookup(presented) if presented else None
        if key is None or key.revoked_at is not None:
            await self.app(scope, receive, send)  # the endpoint answers 401
            return
        chunks, complete = await _buffer(receive, state.settings.limits.max_body_bytes)
        replay = _replaying(chunks, complete, receive)
        if not complete:
            await self.app(scope, replay, send)  # the endpoint answers 413
            return
        digest = hashlib.sha256(b"%s\n%s\n%s" % (
            scope["path"].encode(), request.headers.get("content-type", "").encode(),
            b"".join(chunks))).hexdigest()
        ttl_ms = state.settings.limits.idempotency_ttl_seconds * 1000
        record = await state.store.idempotency_begin(key.id, idem_key, digest,
                                                     now=now_ms(state.clock), ttl_ms=ttl_ms)
        if record is not None:
            if record.request_hash != digest:
                await self._refuse(scope, receive, send, Unprocessable(
                    "this Idempotency-Key was already used with a different request",
                    param="Idempotency-Key"))
            elif record.response is None:
                await self._refuse(scope, receive, send, Conflict(
                    "a request with this Idempotency-Key is still in progress",
                    param="Idempotency-Key"))
            else:
                await _send_replay(send, record.response)
            return
        await self._first(scope, replay, send, state, key.id, idem_key)

    async def _first(self, scope: Scope, receive: Receive, send: Send, state: AppState,
                     key_id: str, idem_key: str) -> None:
        status = 0
        content_type = "application/json"
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        content_type = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        response = None
        try:
            await self.app(scope, receive, capture)
            if 200 <= status < 300:
                response = IdempotentResponse(status=status, body=b"".join(chunks),
                                              content_type=content_type)
        finally:
            await state.store.idempotency_finish(key_id, idem_key, response)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: MuxError) -> None:
        await renderer_for(scope["path"])(exc)(scope, receive, send)


async def _buffer(receive: Receive, limit: int) -> tuple[list[bytes], bool]:
    """Read the body up to ``limit`` bytes; ``complete`` is False if it is longer."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return chunks, False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return chunks, False
        if not message.get("more_body", False):
            return chunks, True


def _replaying(chunks: list[bytes], complete: bool, receive: Receive) -> Receive:
    """A receive that hands out the buffered chunks again, then whatever is left."""
    pending = list(chunks)

    async def replay() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk,
                    "more_body": bool(pending) or not complete}
        return await receive()

    return replay


async def _send_replay(send: Send, response: IdempotentResponse) -> None:
    await send({"type": "http.response.start", "status": response.status,
                "headers": [(b"content-type", response.content_type.encode("latin-1")),
                            (b"content-length", str(len(response.body)).encode()),
                            (b"idempotent-replayed", b"true")]})
    await send({"type": "http.response.body", "body": response.body})
