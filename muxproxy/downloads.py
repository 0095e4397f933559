"""Serving a stored image over HTTP, for every route that hands out image bytes
(``/files`` and the ModelMux ``/image``): HEAD, one Range, the same headers, and
every refusal, a bad Range included, in the calling surface's own error shape.

A backend with files of its own is served by Starlette's ``FileResponse`` (it
sends the file without reading it into memory, and handles If-Range and several
ranges); any other backend is streamed in chunks from its ``open_read``, one range
at most, its first chunk read before the answer starts, so a storage that fails
then is still a 503 (with Retry-After) rather than a cut-off answer. When the
caller gives ``redirect_ttl`` and the backend has a URL of its own for the blob (an
object store's presigned GET), the answer is a 302 to it and the bytes never pass
through the gateway.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator

from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    MalformedRangeHeader,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.responses import RangeNotSatisfiable as _Unsatisfiable

from muxproxy.errors import InvalidRequest, NotFound, RangeNotSatisfiable, StorageFailing
from muxproxy.http import ErrorRenderer
from muxproxy.logs import get_logger
from muxproxy.metrics import Metrics
from muxproxy.storage import BlobNotFound, BlobStorage, inline_disposition

log = get_logger("muxproxy.downloads")

CACHE_CONTROL = "private, max-age=300"


async def serve_blob(request: Request, storage: BlobStorage, key: str, *,
                     content_type: str, render: ErrorRenderer, missing: str,
                     filename: str | None = None, redirect_ttl: int | None = None,
                     metrics: Metrics | None = None) -> Response:
    """The blob under ``key`` as the answer to ``request``. A missing blob raises
    :class:`NotFound` with the message ``missing``, a failing storage
    :class:`StorageFailing` (503); the caller's surface renders either (``render``
    is needed here only for the 416, which carries a header)."""
    try:
        return await _serve(request, storage, key, content_type, render, missing, filename,
                            redirect_ttl)
    except OSError:
        if metrics is not None:
            metrics.storage_errors.labels("read").inc()
        log.error("blob storage failed", operation="read", exc_info=True)
        raise StorageFailing() from None


async def _serve(request: Request, storage: BlobStorage, key: str, content_type: str,
                 render: ErrorRenderer, missing: str, filename: str | None,
                 redirect_ttl: int | None) -> Response:
    headers = {"Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
    if filename is not None:
        headers["Content-Disposition"] = inline_disposition(filename)
    try:
        if redirect_ttl is not None:
            url = await storage.url_for(key, redirect_ttl, filename=filename)
            if url is not None:
                # Not kept by caches: the URL it points to expires on its own clock.
                return RedirectResponse(url, status_code=302,
                                        headers={"Cache-Control": "no-store"})
        path = storage.local_path(key)
        if path is not None:
            # Stat once here: a file gone by now is a 404, not a failed stream.
            stat = os.stat(path)
            try:
                _ranges(request, stat.st_size)  # FileResponse would refuse in plain text
            except _Unsatisfiable:
                return _past_the_end(stat.st_size, render)
            return FileResponse(path, media_type=content_type, headers=headers,
                                stat_result=stat)
        size = (await storage.stat(key)).size
        return await _stream(request, storage, key, size, content_type, headers, render)
    except (BlobNotFound, FileNotFoundError):
        raise NotFound(missing) from None


async def _stream(request: Request, storage: BlobStorage, key: str, size: int,
                  content_type: str, headers: dict[str, str], render: ErrorRenderer
                  ) -> Response:
    try:
        ranges = _ranges(request, size)
    except _Unsatisfiable:
        return _past_the_end(size, render)
    start, end, status = 0, size, 200
    if len(ranges) == 1:  # several ranges get the whole blob, as HTTP allows
        (start, end), status = ranges[0], 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers |= {"Accept-Ranges": "bytes", "Content-Length": str(end - start)}
    if request.method == "HEAD":
        return Response(b"", status_code=status, media_type=content_type, headers=headers)
    chunks = storage.open_read(key, start, end)
    try:
        first = await anext(chunks, b"")
    except BaseException:
        await chunks.aclose()
        raise
    return StreamingResponse(_after(first, chunks), status_code=status,
                             media_type=content_type, headers=headers)


async def _after(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """The chunk read ahead, then the rest of the stream (closed however it ends)."""
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


def _ranges(request: Request, size: int) -> list[tuple[int, int]]:
    """The byte ranges asked for, end exclusive; none for the whole blob. A Range
    that cannot be read raises :class:`InvalidRequest` (its 400), one past the end
    Starlette's ``RangeNotSatisfiable``, whatever If-Range says: FileResponse would
    refuse either in plain text."""
    http_range = request.headers.get("range")
    if http_range is None:
        return []
    try:
        ranges = FileResponse._parse_range_header(http_range, size)
    except MalformedRangeHeader as exc:
        raise InvalidRequest(f"malformed Range header: {exc.content}",
                             param="Range") from None
    # If-Range only chooses between the range and the whole blob: FileResponse
    # compares it with its validators; a stream has none, so it sends the whole blob.
    return [] if "if-range" in request.headers else ranges


def _past_the_end(size: int, render: ErrorRenderer) -> Response:
    response = render(RangeNotSatisfiable(
        f"the Range header asks for bytes past the end of this {size}-byte file"))
    response.headers["Content-Range"] = f"bytes */{size}"
    return response
