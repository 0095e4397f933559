"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy.app_state import AppState
from muxproxy.http import JSONResponse
from muxproxy.logs import get_logger

log = get_logger("muxproxy.ops")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state: AppState = request.app.state.mux
    try:
        await state.store.ping()
    except Exception as exc:
        log.warning("readiness check failed", error=type(exc).__name__)
        return JSONResponse({"status": "unavailable", "store": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ready", "store": "ok"})


async def metrics(request: Request) -> Response:
    state: AppState = request.app.state.mux
    try:
        state.metrics.set_job_counts(await state.store.count_jobs())
        await state.relay.refresh_metrics()
    except Exception:
        log.warning("could not count jobs for metrics", exc_info=True)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
