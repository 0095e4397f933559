"""``Idempotency-Key`` on every create call, as plain ASGI middleware.

The first request with a key reserves it; the job it creates is bound to the key
in the transaction that stores the job. A retry with the same key and the same
body is answered from that job, whatever became of the first answer (a timeout,
a hang-up, a 5xx, a crash): rendered from the job's current state by the
surface (``Idempotent-Replayed: true``), and nothing is created. The table keeps
the job id and a digest of the request, never a response.

The same key with another body is refused with 422. A retry while the first
request is still in its create step (no job bound yet) gets 409, whichever
replica holds it: the reservation is leased for :data:`CREATE_STEP_MS`. Once that
lease lapsed (its process died, or the request never finished the step) the retry
takes the key over. A request that fails before
creating a job drops its reservation: a retry runs again. Keys belong to the API
key that sent them and expire after ``limits.idempotency_ttl_seconds``.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from muxproxy.app_state import AppState
from muxproxy.auth import presented_key
from muxproxy.clock import now_ms
from muxproxy.errors import Conflict, InternalError, InvalidRequest, MuxError, Unprocessable
from muxproxy.forms import FormLimits, parse_form
from muxproxy.http import IDEMPOTENCY_SCOPE_KEY
from muxproxy.logs import get_logger
from muxproxy.middleware import header
from muxproxy.pipeline.jobs import IdempotencyClaim
from muxproxy.store import ApiKey
from muxproxy.surfaces.registry import CREATES

log = get_logger("muxproxy.idempotency")

# The lease of a reservation with no job yet: until it lapses a retry gets 409, on
# any replica. A create step (validation, storing uploads, the insert) takes well
# under a second; a reservation older than this belongs to a request that never
# finished it (or to a process that died), and the retry takes the key over.
CREATE_STEP_MS = 30_000


class Idempotency:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        idem_key = None
        if scope["type"] == "http" and scope["method"] == "POST" \
                and scope["path"] in CREATES:
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
                await _refuse(scope, receive, send, exc)
        except Exception:
            # Like every endpoint: logged, and a 500 in the surface's own shape.
            log.exception("idempotency failed", path=scope["path"])
            if not started:
                await _refuse(scope, receive, send, InternalError("internal server error"))

    async def _handle(self, scope: Scope, receive: Receive, send: Send,
                      idem_key: str) -> None:
        if not 1 <= len(idem_key) <= 255:
            await _refuse(scope, receive, send, InvalidRequest(
                "Idempotency-Key must be 1 to 255 characters", param="Idempotency-Key"))
            return
        state: AppState = scope["app"].state.mux
        presented = presented_key(Request(scope))
        key = await state.auth.lookup(presented) if presented else None
        if key is None or key.revoked_at is not None:
            await self.app(scope, receive, send)  # the endpoint answers 401
            return
        chunks, complete = await _buffer(receive, state.settings.limits.max_body_bytes)
        replay = _replaying(chunks, complete, receive)
        if not complete:
            await self.app(scope, replay, send)  # the endpoint answers 413
            return
        digest = await request_digest(scope["path"], header(scope, b"content-type") or "",
                                      b"".join(chunks), state.settings.limits.max_body_bytes)
        outcome = await state.store.idempotency_begin(
            key.id, idem_key, digest, now=now_ms(state.clock),
            ttl_ms=state.settings.limits.idempotency_ttl_seconds * 1000,
            owner=state.scheduler.owner, create_step_ms=CREATE_STEP_MS)
        if isinstance(outcome, IdempotencyClaim):
            # In place, not a copy: the router's notes on the scope (the route, for
            # metrics) must reach the middleware outside this one.
            scope[IDEMPOTENCY_SCOPE_KEY] = outcome
            try:
                await self.app(scope, replay, send)
            finally:
                # A no-op once the job is bound; otherwise no job exists: a retry runs.
                await state.store.idempotency_release(outcome)
        elif outcome.request_hash != digest:
            await _refuse(scope, replay, send, Unprocessable(
                "this Idempotency-Key was already used with a different request",
                param="Idempotency-Key"))
        elif outcome.job_id is None:
            await _refuse(scope, replay, send, Conflict(
                "a request with this Idempotency-Key is still in progress",
                param="Idempotency-Key"))
        else:
            await _replay(scope, replay, send, state, key, outcome.job_id)


async def _replay(scope: Scope, receive: Receive, send: Send, state: AppState, key: ApiKey,
                  job_id: str) -> None:
    """The surface's answer for the bound job, as it stands now."""
    request = Request(scope, receive)
    surface = CREATES[scope["path"]]
    assert surface.replay is not None
    try:
        job = await state.gateway.job_for(key, job_id)
        response = await surface.replay(request, state, job)
    except MuxError as exc:
        response = surface.render_error(exc)
    response.headers["idempotent-replayed"] = "true"
    response.headers["x-muxproxy-job-id"] = job_id
    await response(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: MuxError) -> None:
    await CREATES[scope["path"]].render_error(exc)(scope, receive, send)


async def request_digest(path: str, content_type: str, body: bytes, limit: int) -> str:
    """What makes two requests "the same": the path and the body. A form is taken
    by its parts, not its bytes: a client's retry draws a new multipart boundary."""
    if content_type.lower().startswith("multipart/form-data"):
        try:
            form = await parse_form(body, content_type, FormLimits(
                max_parts=1000, max_file_bytes=limit, max_field_bytes=limit))
        except MuxError:
            pass  # the endpoint refuses it; no job, so nothing to bind
        else:
            digest = hashlib.sha256(path.encode() + b"\nform\n")
            for name, value in sorted(form.fields.items()):
                digest.update(b"field %d %s %d %s" % (len(name), name.encode(), len(value),
                                                      value.encode()))
            for part in form.files:
                filename = (part.filename or "").encode()
                digest.update(b"file %d %s %d %s %d " % (
                    len(part.name), part.name.encode(), len(filename), filename,
                    len(part.data)))
                digest.update(part.data)
            return digest.hexdigest()
    return hashlib.sha256(b"%s\n%s\n%s" % (path.encode(), content_type.encode(),
                                            body)).hexdigest()


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
