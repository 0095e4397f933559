"""Liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy.app_state import AppState
from muxproxy.errors import Unauthorized
from muxproxy.http import JSONResponse
from muxproxy.logs import get_logger
from muxproxy.metrics import SharedScrape
from muxproxy.surfaces import native

log = get_logger("muxproxy.ops")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


# The notification listener's state (Notifier.listening), as /readyz shows it.
_SIGNALS = {None: "local", True: "listening", False: "reconnecting"}


async def readyz(request: Request) -> Response:
    """Ready while the store reads and writes and the blob storage writes, reads and
    deletes (see muxproxy.readiness); providers' circuits are shown, not judged (one
    provider down is what routes and fallbacks are for), and so is the listener of
    other processes' signals (without it, waits still end by reading their job)."""
    state: AppState = request.app.state.mux
    circuits = {name: breaker.state.value for name, breaker in state.breakers.items()}
    health = await state.readiness.check()
    body = {"status": "ready" if health.ready else "unavailable",
            "store": "ok" if health.store else "unreachable",
            "storage": "ok" if health.storage else "failing", "providers": circuits,
            "signals": _SIGNALS[state.notifier.listening]}
    return JSONResponse(body, status_code=200 if health.ready else 503)


def _authorized(request: Request, token: str) -> bool:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(),
                                                              token.encode())


async def metrics(request: Request) -> Response:
    """Counts come from tables kept by triggers and in-process metrics: a scrape
    costs the same whatever the number of jobs, and reads nothing that a key check
    would wait behind."""
    state: AppState = request.app.state.mux
    token = state.settings.metrics.token
    if token and not _authorized(request, token):
        response = native.render_error(Unauthorized("missing or wrong metrics token"))
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    scrapes: SharedScrape | None = getattr(request.app.state, "scrapes", None)
    if scrapes is None:
        scrapes = request.app.state.scrapes = SharedScrape(lambda: _collect(state),
                                                          state.metrics.render)
    return Response(await scrapes.scrape(), media_type=CONTENT_TYPE_LATEST)


async def _collect(state: AppState) -> None:
    """Gauges read at scrape time: counts from the store, circuits."""
    try:
        state.metrics.set_job_counts(await state.store.count_jobs())
        await state.relay.refresh_metrics()
    except Exception:
        log.warning("could not count jobs for metrics", exc_info=True)
    for name, breaker in state.breakers.items():
        state.metrics.circuit_open.labels(name).set(1 if breaker.state == "open" else 0)


async def openapi(request: Request) -> Response:
    # create_app's OpenApiDocument (muxproxy.openapi.document), built once per app.
    body: bytes = request.app.state.openapi.body()
    return Response(body, media_type="application/json")


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
