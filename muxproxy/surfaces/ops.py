"""Liveness, readiness, Prometheus metrics and the OpenAPI document."""

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
    """Ready while the store reads and writes and the blob storage writes, reads and
    deletes (see muxproxy.readiness); providers' circuits are shown, not judged (one
    provider down is what routes and fallbacks are for)."""
    state: AppState = request.app.state.mux
    circuits = {name: breaker.state.value for name, breaker in state.breakers.items()}
    health = await state.readiness.check()
    body = {"status": "ready" if health.ready else "unavailable",
            "store": "ok" if health.store else "unreachable",
            "storage": "ok" if health.storage else "failing", "providers": circuits}
    return JSONResponse(body, status_code=200 if health.ready else 503)


async def metrics(request: Request) -> Response:
    state: AppState = request.app.state.mux
    try:
        state.metrics.set_job_counts(await state.store.count_jobs())
        await state.relay.refresh_metrics()
    except Exception:
        log.warning("could not count jobs for metrics", exc_info=True)
    for name, breaker in state.breakers.items():
        state.metrics.circuit_open.labels(name).set(1 if breaker.state == "open" else 0)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


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
