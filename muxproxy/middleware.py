"""Request context as plain ASGI middleware: a request id on every log line and
response, an access log line, and request metrics labelled by route template."""

from __future__ import annotations

import re
import secrets
import time

import structlog
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from muxproxy.logs import get_logger
from muxproxy.metrics import Metrics

log = get_logger("muxproxy.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = header(scope, b"x-request-id")
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else secrets.token_hex(8)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_name(scope)
            method = scope["method"]
            self.metrics.http_requests.labels(route, method, str(status)).inc()
            self.metrics.http_latency.labels(route, method).observe(elapsed)
            if route not in ("/metrics", "/healthz", "/readyz"):
                log.info("request", method=method, route=route, status=status,
                         ms=round(elapsed * 1000, 2))
            structlog.contextvars.clear_contextvars()


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's first value (``name`` in lower case), or None."""
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route_name(scope: Scope) -> str:
    # A surface's mount is no route: a path under it that nothing serves is unmatched.
    route = scope.get("route")
    return route.path if isinstance(route, Route) else "unmatched"
