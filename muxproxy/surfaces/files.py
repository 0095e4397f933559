"""Signed image downloads: ``/files/{token}/{name}``, streamed from the storage, or
with ``storage.redirect`` (and a storage that presigns) a 302 to the bucket.

Every refusal, a bad Range included, is JSON in the native shape, as the rest of
the gateway's answers outside a surface (see :mod:`muxproxy.downloads`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy.app_state import AppState
from muxproxy.downloads import serve_blob
from muxproxy.errors import Forbidden
from muxproxy.http import surface
from muxproxy.signing import LinkExpired, LinkInvalid
from muxproxy.storage.base import content_type_of
from muxproxy.surfaces.native import render_error


@surface(render_error)
async def download(request: Request) -> Response:
    state: AppState = request.app.state.mux
    try:
        key, seconds_left = state.signer.verify_timed(request.path_params["token"])
    except LinkExpired:
        raise Forbidden("this link has expired; poll the task again for a fresh one") from None
    except LinkInvalid:
        raise Forbidden("invalid link signature") from None
    # With storage.redirect, a 302 to a presigned URL that ends when this link does.
    redirect = seconds_left if state.settings.storage.redirect else None
    return await serve_blob(request, state.storage, key, content_type=content_type_of(key),
                            render=render_error, missing="file not found",
                            redirect_ttl=redirect, metrics=state.metrics)


routes = [Route("/files/{token}/{name}", download, methods=["GET", "HEAD"])]
