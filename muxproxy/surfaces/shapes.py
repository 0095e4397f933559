"""Which surface answers a path outside an endpoint: its error shape (unknown
routes, middleware refusals) and its replay of a create call (Idempotency-Key)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from muxproxy.app_state import AppState
from muxproxy.http import ErrorRenderer
from muxproxy.jobs import Job
from muxproxy.surfaces import admin, modelmux, native, openai

# The answer a create call's retry gets for the job the first call created.
Replayer = Callable[[Request, AppState, Job], Awaitable[Response]]

# First match wins; anything else speaks the native task API's shape.
ERROR_SHAPES: tuple[tuple[str, ErrorRenderer], ...] = (
    ("/v1/", openai.render_error),
    ("/api/v1/generations", modelmux.render_error),
    ("/admin/", admin.render_error),
)
REPLAYS: tuple[tuple[str, Replayer], ...] = (
    ("/v1/", openai.replay),
    ("/api/v1/generations", modelmux.replay),
)


def renderer_for(path: str) -> ErrorRenderer:
    for prefix, render in ERROR_SHAPES:
        if path.startswith(prefix):
            return render
    return native.render_error


def replayer_for(path: str) -> Replayer:
    for prefix, replay in REPLAYS:
        if path.startswith(prefix):
            return replay
    return native.replay
