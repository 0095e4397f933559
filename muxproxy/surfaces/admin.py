"""The admin API under ``/admin/``: keys, credits, limits, ledger and usage.

Guarded by ``admin.token`` (``Authorization: Bearer TOKEN``), compared in constant
time; API keys are not admin tokens. Errors: ``{"error": "...", "code": "..."}``.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy.app_state import AppState
from muxproxy.auth import hash_key
from muxproxy.clock import now_ms
from muxproxy.errors import Conflict, InvalidRequest, MuxError, NotFound, Unauthorized
from muxproxy.http import JSONResponse, parse_json_object, read_body, surface, with_retry_after
from muxproxy.keys import (
    MAX_BALANCE,
    MAX_CREDITS,
    LimitError,
    apply_limits,
    key_view,
    ledger_view,
    new_secret,
    usage_view,
)
from muxproxy.store import ApiKey, KeyExists, KeyLimits, KeyNotFound

ADMIN_BODY_LIMIT = 64 * 1024
LIMIT_FIELDS = {"unlimited", "rpm", "max_concurrent", "models", "webhook_allow_networks"}
DAY_MS = 86_400_000


def render_error(exc: MuxError) -> Response:
    return with_retry_after(JSONResponse({"error": exc.message, "code": exc.code},
                                         status_code=exc.status), exc)


def _authorize(request: Request) -> AppState:
    state: AppState = request.app.state.mux
    token = state.settings.admin.token
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if not token:
        raise Unauthorized("the admin API is disabled: set admin.token in the config")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(),
                                                            token.encode()):
        raise Unauthorized("missing or wrong admin token")
    return state


async def _body(request: Request) -> dict[str, Any]:
    return parse_json_object(await read_body(request, ADMIN_BODY_LIMIT))


async def _key(state: AppState, request: Request) -> ApiKey:
    key = await state.store.get_key(request.path_params["key"])
    if key is None:
        raise NotFound("no such key")
    return key


def _limits(base: KeyLimits, body: dict[str, Any]) -> KeyLimits:
    try:
        return apply_limits(base, body)
    except LimitError as exc:
        raise InvalidRequest(str(exc), param=exc.field) from None


@surface(render_error)
async def create_key(request: Request) -> Response:
    state = _authorize(request)
    body = await _body(request)
    unknown = set(body) - {"name", "credits", *LIMIT_FIELDS}
    if unknown:
        raise InvalidRequest(f"unknown field: {', '.join(sorted(unknown))}")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InvalidRequest("'name' is required (1-100 characters)", param="name")
    credits = body.get("credits", 0)
    if isinstance(credits, bool) or not isinstance(credits, int) \
            or not 0 <= credits <= MAX_CREDITS:
        raise InvalidRequest(f"'credits' must be a whole number from 0 to {MAX_CREDITS}",
                             param="credits")
    secret = new_secret()
    try:
        key = await state.store.create_key(name, hash_key(secret), now=now_ms(state.clock),
                                           limits=_limits(KeyLimits(), body), credits=credits)
    except KeyExists:
        raise Conflict(f"a key named {name!r} exists") from None
    # The secret is shown once, here; only its hash is kept.
    return JSONResponse({"key": key_view(key), "secret": secret}, status_code=201)


@surface(render_error)
async def list_keys(request: Request) -> Response:
    state = _authorize(request)
    return JSONResponse({"keys": [key_view(k) for k in await state.store.list_keys()]})


@surface(render_error)
async def get_key(request: Request) -> Response:
    state = _authorize(request)
    return JSONResponse(key_view(await _key(state, request)))


@surface(render_error)
async def update_key(request: Request) -> Response:
    state = _authorize(request)
    key = await _key(state, request)
    body = await _body(request)
    unknown = set(body) - LIMIT_FIELDS
    if unknown:
        raise InvalidRequest(f"unknown field: {', '.join(sorted(unknown))}")
    updated = await state.store.update_key(key.id, _limits(key.limits, body))
    state.auth.forget()
    return JSONResponse(key_view(updated))


@surface(render_error)
async def topup(request: Request) -> Response:
    state = _authorize(request)
    key = await _key(state, request)
    body = await _body(request)
    amount, note = body.get("amount"), body.get("note")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0 \
            or abs(amount) > MAX_CREDITS:
        raise InvalidRequest(f"'amount' must be a non-zero whole number from -{MAX_CREDITS} "
                             f"to {MAX_CREDITS}", param="amount")
    if abs(key.balance + amount) > MAX_BALANCE:
        raise InvalidRequest(f"the balance would pass {MAX_BALANCE} credits either way",
                             param="amount")
    if note is not None and (not isinstance(note, str) or len(note) > 500):
        raise InvalidRequest("'note' must be a string of at most 500 characters",
                             param="note")
    try:
        updated = await state.store.topup(key.id, amount, now=now_ms(state.clock), note=note)
    except KeyNotFound:
        raise NotFound("no such key") from None
    state.auth.forget()
    return JSONResponse(key_view(updated))


@surface(render_error)
async def revoke(request: Request) -> Response:
    state = _authorize(request)
    key = await _key(state, request)
    revoked = await state.store.revoke_key(key.id, now=now_ms(state.clock))
    state.auth.forget()  # its very next request gets 401
    return JSONResponse(key_view(revoked))


@surface(render_error)
async def ledger(request: Request) -> Response:
    state = _authorize(request)
    key = await _key(state, request)
    limit = _query_int(request, "limit", 100, 1, 1000)
    before = _query_int(request, "before", 0, 0, 2**62) or None
    entries = await state.store.ledger(key.id, limit=limit, before=before)
    return JSONResponse({"key": key_view(key), "entries": [ledger_view(e) for e in entries],
                         "ledger_sum": await state.store.ledger_sum(key.id)})


@surface(render_error)
async def usage(request: Request) -> Response:
    state = _authorize(request)
    key = await _key(state, request)
    days = _query_int(request, "days", 30, 1, 3660)
    since = now_ms(state.clock) - days * DAY_MS
    rows = await state.store.usage(key.id, since=since)
    return JSONResponse({"key": key_view(key), "days": days,
                         "usage": [usage_view(r) for r in rows]})


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or not low <= int(raw) <= high:
        raise InvalidRequest(f"'{name}' must be a whole number from {low} to {high}",
                             param=name)
    return int(raw)


routes = [
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys", list_keys, methods=["GET"]),
    Route("/admin/keys/{key}", get_key, methods=["GET"]),
    Route("/admin/keys/{key}", update_key, methods=["PATCH"]),
    Route("/admin/keys/{key}/topup", topup, methods=["POST"]),
    Route("/admin/keys/{key}/revoke", revoke, methods=["POST"]),
    Route("/admin/keys/{key}/ledger", ledger, methods=["GET"]),
    Route("/admin/keys/{key}/usage", usage, methods=["GET"]),
]
