"""HTTP plumbing shared by the surfaces: fast JSON, bounded body reading, and the
one place where domain errors turn into each surface's error body."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse as _StarletteJSON
from starlette.responses import Response

from muxproxy.errors import InternalError, InvalidRequest, MuxError, PayloadTooLarge
from muxproxy.logs import get_logger
from muxproxy.pipeline.jobs import IdempotencyClaim

log = get_logger("muxproxy.http")

# Where the Idempotency middleware leaves the key it reserved for a create call.
IDEMPOTENCY_SCOPE_KEY = "muxproxy.idempotency"

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[MuxError], Response]
T = TypeVar("T")


class JSONResponse(_StarletteJSON):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def idempotency_claim(request: Request) -> IdempotencyClaim | None:
    """The Idempotency-Key this create call reserved, for the gateway to bind to
    its job (see :mod:`muxproxy.idempotency`)."""
    claim: IdempotencyClaim | None = request.scope.get(IDEMPOTENCY_SCOPE_KEY)
    return claim


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise InvalidRequest("invalid Content-Length header") from None
        if too_big:
            raise PayloadTooLarge(f"request body exceeds the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit} byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise InvalidRequest("client disconnected while sending the body") from None
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidRequest("request body is empty; send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc.args[0] if exc.args else exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def surface(render: ErrorRenderer) -> Callable[[Endpoint], Endpoint]:
    """Wrap an endpoint so every failure leaves in its surface's error shape.

    Unexpected exceptions are logged with their traceback and answered as a plain
    500 in the surface's shape: the client never sees a stack trace.
    """

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapped(request: Request) -> Response:
            try:
                return await endpoint(request)
            except MuxError as exc:
                response = render(exc)
            except Exception:
                log.exception("unhandled error", path=request.url.path)
                response = render(InternalError("internal server error"))
            return response

        return wrapped

    return decorate


async def unless_hung_up(request: Request, waiting: Coroutine[Any, Any, T]) -> T | None:
    """What ``waiting`` returns, or None if the client hangs up first (``waiting`` is
    then cancelled). The request's body must have been read already."""
    wait = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({wait, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not wait.done():
            wait.cancel()
            await asyncio.wait({wait})
    return None if wait.cancelled() else wait.result()


async def _disconnect(request: Request) -> None:
    # The body is read: the next ASGI message is the disconnect, if it ever comes.
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:
        log.warning("could not watch for a client disconnect", exc_info=True)
        await asyncio.Event().wait()


def with_retry_after(response: Response, exc: MuxError) -> Response:
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    return response
