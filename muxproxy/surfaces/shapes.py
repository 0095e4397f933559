"""Which surface's error shape answers a path, for answers made outside an
endpoint (unknown routes, middleware refusals)."""

from __future__ import annotations

from muxproxy.http import ErrorRenderer
from muxproxy.surfaces import admin, modelmux, native, openai

# First match wins; anything else speaks the native task API's shape.
ERROR_SHAPES: tuple[tuple[str, ErrorRenderer], ...] = (
    ("/v1/", openai.render_error),
    ("/api/v1/generations", modelmux.render_error),
    ("/admin/", admin.render_error),
)


def renderer_for(path: str) -> ErrorRenderer:
    for prefix, render in ERROR_SHAPES:
        if path.startswith(prefix):
            return render
    return native.render_error
