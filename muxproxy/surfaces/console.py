"""The web console as a surface (docs/console.md): its pages are in
:mod:`muxproxy.console`; here are its routes at the default path and its error page,
which answers the mount's unknown paths and methods."""

from __future__ import annotations

import html

from starlette.responses import HTMLResponse, Response

from muxproxy.console.pages import secured
from muxproxy.console.routes import routes_at
from muxproxy.errors import MuxError
from muxproxy.openapi.common import Part
from muxproxy.settings import ConsoleSettings, Settings

DEFAULT_PATH = ConsoleSettings().path
routes = routes_at(DEFAULT_PATH)
__all__ = ["DEFAULT_PATH", "openapi", "render_error", "routes", "routes_at"]


def render_error(exc: MuxError) -> Response:
    body = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{exc.status} - muxproxy console</title></head><body><main>"
            f"<h1>{exc.status}</h1><p>{html.escape(exc.message)}</p></main></body></html>")
    return secured(HTMLResponse(body, status_code=exc.status))


def openapi(settings: Settings) -> Part:
    """Nothing: the console is pages for a browser, not part of the HTTP API."""
    return Part()
