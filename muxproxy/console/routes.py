"""The console's routes under its path (``console.path``), and its two static files."""

from __future__ import annotations

from importlib import resources

from starlette.responses import Response
from starlette.routing import Route

from muxproxy.console import jobs, keys, overview, playground, providers, signin
from muxproxy.console.pages import Ctx, page
from muxproxy.errors import NotFound

# Served from the package: nothing comes from elsewhere, and nothing is built.
STATIC = {"console.css": "text/css; charset=utf-8",
          "console.js": "text/javascript; charset=utf-8",
          "favicon.svg": "image/svg+xml"}


@page(signed_in=False)
async def static(ctx: Ctx) -> Response:
    name = ctx.request.path_params["name"]
    if name not in STATIC:
        raise NotFound(f"no file {name!r}")
    body = resources.files("muxproxy.console").joinpath("static", name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "max-age=3600"})


@page()
async def home(ctx: Ctx) -> Response:
    return ctx.redirect("/overview")


def routes_at(path: str) -> list[Route]:
    """Every console route, under ``path`` (which has no trailing slash)."""
    return [
        Route(path, home, methods=["GET"]),
        Route(f"{path}/static/{{name}}", static, methods=["GET"]),
        Route(f"{path}/signin", signin.signin_form, methods=["GET"]),
        Route(f"{path}/signin", signin.signin, methods=["POST"]),
        Route(f"{path}/signout", signin.signout, methods=["POST"]),
        Route(f"{path}/overview", overview.overview, methods=["GET"]),
        Route(f"{path}/keys", keys.list_keys, methods=["GET"]),
        Route(f"{path}/keys", keys.create_key, methods=["POST"]),
        Route(f"{path}/keys/{{key}}", keys.show_key, methods=["GET"]),
        Route(f"{path}/keys/{{key}}/credits", keys.topup, methods=["POST"]),
        Route(f"{path}/keys/{{key}}/limits", keys.set_limits, methods=["POST"]),
        Route(f"{path}/keys/{{key}}/revoke", keys.revoke, methods=["POST"]),
        Route(f"{path}/jobs", jobs.list_jobs, methods=["GET"]),
        Route(f"{path}/jobs/{{id}}", jobs.show_job, methods=["GET"]),
        Route(f"{path}/jobs/{{id}}/status", jobs.job_status, methods=["GET"]),
        Route(f"{path}/jobs/{{id}}/redeliver", jobs.redeliver, methods=["POST"]),
        Route(f"{path}/jobs/{{id}}/cancel", jobs.cancel, methods=["POST"]),
        Route(f"{path}/providers", providers.providers, methods=["GET"]),
        Route(f"{path}/playground", playground.playground, methods=["GET"]),
        Route(f"{path}/playground", playground.run, methods=["POST"]),
    ]
