"""Every HTTP surface, declared once: its routes, where its error shape starts, how
it answers a create call's retry, and its part of the OpenAPI document.

``create_app`` mounts them, the Idempotency middleware takes its create paths from
them, the OpenAPI document is assembled from them, and the security tests derive
their tables of protected routes from them. A new surface is one entry in
:data:`SURFACES` (and a :class:`~muxproxy.surfaces.SurfaceName`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route, Router
from starlette.types import Receive, Scope, Send

from muxproxy.app_state import AppState
from muxproxy.errors import MuxError, status_error
from muxproxy.http import ErrorRenderer
from muxproxy.openapi import admin as admin_doc
from muxproxy.openapi import mcp as mcp_doc
from muxproxy.openapi import modelmux as modelmux_doc
from muxproxy.openapi import native as native_doc
from muxproxy.openapi import openai as openai_doc
from muxproxy.openapi import ops as ops_doc
from muxproxy.openapi.common import Part
from muxproxy.pipeline.jobs import Job
from muxproxy.settings import Settings
from muxproxy.surfaces import (
    SurfaceName,
    admin,
    callbacks,
    console,
    files,
    mcp,
    modelmux,
    native,
    openai,
    ops,
)

# The answer a create call's retry gets for the job the first call created.
Replayer = Callable[[Request, AppState, Job], Awaitable[Response]]


class Access(Enum):
    """What a surface's routes ask of a caller."""

    API_KEY = "api key"  # Authorization: Bearer KEY, or x-api-key
    ADMIN = "admin token"  # admin.token
    SESSION = "console session"  # a console sign-in (admin token or API key), by cookie
    OPEN = "open"  # nothing, or a signed link


@dataclass(frozen=True)
class Surface:
    name: SurfaceName
    routes: Sequence[Route]
    render_error: ErrorRenderer
    access: Access
    openapi: Callable[[Settings], Part]
    # Every path starting with this is the surface's own: an unknown path or method
    # there is answered in its error shape. None: the default surface's shape.
    prefix: str | None = None
    # Create calls, for Idempotency-Key; a retry is answered by ``replay``.
    creates: frozenset[str] = frozenset()
    replay: Replayer | None = None


# In the OpenAPI document's order; the first prefix a path starts with wins (the
# hot native routes are matched first).
SURFACES: tuple[Surface, ...] = (
    Surface(SurfaceName.NATIVE, native.routes, native.render_error, Access.API_KEY,
            native_doc.part, prefix="/api/v1/images/generations",
            creates=frozenset({"/api/v1/images/generations"}), replay=native.replay),
    Surface(SurfaceName.CALLBACKS, callbacks.routes, native.render_error, Access.API_KEY,
            native_doc.callbacks_part, prefix="/api/v1/webhooks/"),
    Surface(SurfaceName.OPENAI, openai.routes, openai.render_error, Access.API_KEY,
            openai_doc.part, prefix="/v1/",
            creates=frozenset({"/v1/images/generations", "/v1/images/edits"}),
            replay=openai.replay),
    Surface(SurfaceName.MODELMUX, modelmux.routes, modelmux.render_error, Access.API_KEY,
            modelmux_doc.part, prefix="/api/v1/generations",
            creates=frozenset({"/api/v1/generations"}), replay=modelmux.replay),
    Surface(SurfaceName.MCP, mcp.routes, mcp.render_error, Access.API_KEY, mcp_doc.part,
            prefix="/mcp"),
    Surface(SurfaceName.ADMIN, admin.routes, admin.render_error, Access.ADMIN,
            admin_doc.part, prefix="/admin/"),
    Surface(SurfaceName.OPS, ops.routes, native.render_error, Access.OPEN, ops_doc.part),
    Surface(SurfaceName.FILES, files.routes, native.render_error, Access.OPEN,
            ops_doc.files_part, prefix="/files/"),
    # At console.path (this is its default): see :func:`for_settings`.
    Surface(SurfaceName.CONSOLE, console.routes, console.render_error, Access.SESSION,
            console.openapi, prefix=console.DEFAULT_PATH),
)
# What answers anything outside every surface's prefix.
DEFAULT = SURFACES[0]
# Create path -> the surface that serves it.
CREATES: Mapping[str, Surface] = {path: s for s in SURFACES for path in s.creates}


def for_settings(settings: Settings) -> tuple[Surface, ...]:
    """The surfaces a gateway with ``settings`` serves: the console at its
    ``console.path``, or not at all when ``console.enabled`` is off."""
    found = []
    for surface in SURFACES:
        if surface.name is SurfaceName.CONSOLE:
            if not settings.console.enabled:
                continue
            path = settings.console.path
            surface = replace(surface, routes=console.routes_at(path), prefix=path)
        found.append(surface)
    return tuple(found)


def client_prefixes(surfaces: Sequence[Surface] = SURFACES) -> tuple[str, ...]:
    """Where browser clients may call (CORS): the surfaces an API key opens, and the
    signed file links; not admin or ops."""
    return tuple(s.prefix for s in surfaces if s.prefix is not None and (
        s.access is Access.API_KEY or s.name is SurfaceName.FILES))


def surface_for(path: str) -> Surface:
    """The surface whose prefix ``path`` falls under, else the default one: who
    answers for a request refused before it reaches the router (its head, at the
    edge), as its mount would."""
    for surface in SURFACES:
        if surface.prefix is not None and path.startswith(surface.prefix):
            return surface
    return DEFAULT


def mounts(surfaces: Sequence[Surface] = SURFACES) -> list[BaseRoute]:
    """The app's routes: one mount per surface prefix, then the rest (routes at the
    root, and every unknown path) in one mount that answers in the default
    surface's shape. Being last and taking every path, it also keeps Starlette's
    slash redirects from sending ``/admin`` to ``/admin/``."""
    rest = [route for s in surfaces if s.prefix is None for route in s.routes]
    return [*(SurfaceMount(s.prefix, s.routes, s.render_error)
              for s in surfaces if s.prefix is not None),
            SurfaceMount("", rest, DEFAULT.render_error)]


class SurfaceMount(Mount):
    """A surface's routes, with its own handler for the router's HTTP exceptions: a
    path under its prefix that no route serves (404), or a method none allows (405,
    with every allowed method in Allow), answers in the surface's shape. Unlike a
    plain Mount, the prefix is a plain string start (``/api/v1/generations`` is
    itself a route) and the routes keep their full paths, which metrics use as
    labels. The handler is a plain ``except`` rather than an ExceptionMiddleware:
    the hot path pays for nothing it does not use."""

    def __init__(self, prefix: str, routes: Sequence[Route], render: ErrorRenderer) -> None:
        self._router = Router(routes=routes)
        super().__init__(prefix, app=self._router)
        self.prefix = prefix
        self.render = render
        self._routes = routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # The path as Starlette's router matches it (without a root_path).
        if scope["type"] == "http" and get_route_path(scope).startswith(self.prefix):
            return Match.FULL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._router.app(scope, receive, send)  # the router without its stack
        except HTTPException as exc:
            # Only the router's own 404 and 405 get here, before any answer began:
            # every endpoint renders its errors itself.
            await self.http_error(Request(scope), exc)(scope, receive, send)

    def http_error(self, request: Request, exc: HTTPException) -> Response:
        error: MuxError = status_error(exc.status_code, exc.detail or "error")
        if exc.status_code == 404:
            error = status_error(404, f"no route for {request.method} {request.url.path}")
        elif exc.status_code == 405:
            error = status_error(405, f"method {request.method} not allowed here")
        response = self.render(error)
        if exc.status_code == 405:
            # Every method some route serves at this path: Starlette's own 405 names
            # only the first route's, and a path may have one route per method.
            allowed = {method for route in self._routes
                       if route.matches(request.scope)[0] is not Match.NONE
                       for method in route.methods or ()}
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response
