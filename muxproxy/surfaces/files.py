"""Signed image downloads: ``/files/{token}/{name}``.

Every refusal, a bad Range included, is JSON in the native shape, as the rest of
the gateway's answers outside a surface; Starlette's own Range refusals are plain
text, so the Range header is checked here first, with Starlette's parser.
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import FileResponse, MalformedRangeHeader, Response
from starlette.responses import RangeNotSatisfiable as _Unsatisfiable
from starlette.routing import Route

from muxproxy.app_state import AppState
from muxproxy.errors import Forbidden, InvalidRequest, NotFound, RangeNotSatisfiable
from muxproxy.http import surface
from muxproxy.images import FORMATS
from muxproxy.signing import LinkExpired, LinkInvalid
from muxproxy.storage import BlobNotFound
from muxproxy.surfaces.native import render_error

_TYPES = {ext: ctype for ext, ctype in FORMATS.items()} | {"gif": "image/gif"}


@surface(render_error)
async def download(request: Request) -> Response:
    state: AppState = request.app.state.mux
    try:
        key = state.signer.verify(request.path_params["token"])
    except LinkExpired:
        raise Forbidden("this link has expired; poll the task again for a fresh one") from None
    except LinkInvalid:
        raise Forbidden("invalid link signature") from None
    content_type = _TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")
    headers = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}
    try:
        path = state.storage.local_path(key)
        if path is not None:
            # Stat once here: a file gone by now is a JSON 404, not a failed stream.
            stat = os.stat(path)
            refusal = _range_refusal(request, stat.st_size)
            if refusal is not None:
                return refusal
            return FileResponse(path, media_type=content_type, headers=headers,
                                stat_result=stat)
        data = await state.storage.get(key)
    except (BlobNotFound, FileNotFoundError):
        raise NotFound("file not found") from None
    return Response(data, media_type=content_type, headers=headers)


def _range_refusal(request: Request, size: int) -> Response | None:
    """The JSON answer to a Range that FileResponse would refuse, if it would."""
    http_range = request.headers.get("range")
    if http_range is None or "if-range" in request.headers:
        return None  # with If-Range, FileResponse decides whether the range applies
    try:
        FileResponse._parse_range_header(http_range, size)
    except MalformedRangeHeader as exc:
        raise InvalidRequest(f"malformed Range header: {exc.content}",
                             param="Range") from None
    except _Unsatisfiable:
        response = render_error(RangeNotSatisfiable(
            f"the Range header asks for bytes past the end of this {size}-byte file"))
        response.headers["Content-Range"] = f"bytes */{size}"
        return response
    return None


routes = [Route("/files/{token}/{name}", download, methods=["GET", "HEAD"])]
