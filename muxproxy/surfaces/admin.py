"""The admin API under ``/admin/``: keys, credits, limits, ledger and usage, all
through :class:`~muxproxy.keyadmin.KeyAdmin` (the CLI's too).

Guarded by ``admin.token`` (``Authorization: Bearer TOKEN``), compared in constant
time; API keys are not admin tokens. ``/admin/keys/{key}`` takes a key id; a key is
found by name with ``GET /admin/keys?name=NAME``. Errors: ``{"error": "...",
"code": "..."}``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy.app_state import AppState
from muxproxy.errors import InvalidRequest, MuxError, Unauthorized
from muxproxy.http import JSONResponse, read_body, surface, with_retry_after
from muxproxy.keyadmin import KeyAdmin, key_view
from muxproxy.store import ApiKey

ADMIN_BODY_LIMIT = 64 * 1024


def render_error(exc: MuxError) -> Response:
    return with_retry_after(JSONResponse({"error": exc.message, "code": exc.code},
                                         status_code=exc.status), exc)


def _authorize(request: Request) -> KeyAdmin:
    state: AppState = request.app.state.mux
    token = state.settings.admin.token
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if not token:
        raise Unauthorized("the admin API is disabled: set admin.token in the config")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(),
                                                            token.encode()):
        raise Unauthorized("missing or wrong admin token")
    return KeyAdmin(state.store, state.clock, state.auth.forget)


async def _body(request: Request) -> dict[str, Any]:
    body = await read_body(request, ADMIN_BODY_LIMIT)
    if not body.strip():
        raise InvalidRequest("request body is empty; send a JSON object")
    # The standard parser keeps a large integer exact and reads 1e309 as infinity,
    # so such a number meets the key rules and their message, as on the CLI.
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"malformed JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


async def _key(admin: KeyAdmin, request: Request) -> ApiKey:
    return await admin.by_id(request.path_params["key"])


def _query(request: Request, name: str, default: Any) -> Any:
    """A query number as the key rules read it: digits become an int, other text
    stays text (and is refused by the rule with its message)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 40 else raw


@surface(render_error)
async def create_key(request: Request) -> Response:
    admin = _authorize(request)
    key, secret = await admin.create(await _body(request))
    # The secret is shown once, here; only its hash is kept.
    return JSONResponse({"key": key_view(key), "secret": secret}, status_code=201)


@surface(render_error)
async def list_keys(request: Request) -> Response:
    admin = _authorize(request)
    unknown = set(request.query_params) - {"name"}
    if unknown:
        raise InvalidRequest(f"unknown query parameter: {', '.join(sorted(unknown))}")
    found = await admin.list_keys(request.query_params.get("name"))
    return JSONResponse({"keys": [key_view(k) for k in found]})


@surface(render_error)
async def get_key(request: Request) -> Response:
    admin = _authorize(request)
    return JSONResponse(key_view(await _key(admin, request)))


@surface(render_error)
async def update_key(request: Request) -> Response:
    admin = _authorize(request)
    key = await _key(admin, request)
    return JSONResponse(key_view(await admin.set_limits(key, await _body(request))))


@surface(render_error)
async def topup(request: Request) -> Response:
    admin = _authorize(request)
    key = await _key(admin, request)
    return JSONResponse(key_view(await admin.topup(key, await _body(request))))


@surface(render_error)
async def deduct(request: Request) -> Response:
    admin = _authorize(request)
    key = await _key(admin, request)
    return JSONResponse(key_view(await admin.deduct(key, await _body(request))))


@surface(render_error)
async def revoke(request: Request) -> Response:
    admin = _authorize(request)
    return JSONResponse(key_view(await admin.revoke(await _key(admin, request))))


@surface(render_error)
async def ledger(request: Request) -> Response:
    admin = _authorize(request)
    key = await _key(admin, request)
    return JSONResponse(await admin.ledger(key, limit=_query(request, "limit", 100),
                                           before=_query(request, "before", None)))


@surface(render_error)
async def usage(request: Request) -> Response:
    admin = _authorize(request)
    key = await _key(admin, request)
    return JSONResponse(await admin.usage(key, days=_query(request, "days", 30)))


routes = [
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys", list_keys, methods=["GET"]),
    Route("/admin/keys/{key}", get_key, methods=["GET"]),
    Route("/admin/keys/{key}", update_key, methods=["PATCH"]),
    Route("/admin/keys/{key}/topup", topup, methods=["POST"]),
    Route("/admin/keys/{key}/deduct", deduct, methods=["POST"]),
    Route("/admin/keys/{key}/revoke", revoke, methods=["POST"]),
    Route("/admin/keys/{key}/ledger", ledger, methods=["GET"]),
    Route("/admin/keys/{key}/usage", usage, methods=["GET"]),
]
