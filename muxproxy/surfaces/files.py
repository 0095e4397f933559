"""Signed image downloads: ``/files/{token}/{name}``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from muxproxy.app_state import AppState
from muxproxy.errors import Forbidden, NotFound
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
            return FileResponse(path, media_type=content_type, headers=headers)
        data = await state.storage.get(key)
    except BlobNotFound:
        raise NotFound("file not found") from None
    return Response(data, media_type=content_type, headers=headers)


routes = [Route("/files/{token}/{name}", download, methods=["GET", "HEAD"])]
