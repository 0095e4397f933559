"""Keys (the operator's): create one (its secret shown once), top it up, change its
limits and allowed models, revoke it, see its balance and ledger. Everything goes
through :class:`~muxproxy.keyadmin.KeyAdmin`, as the admin API and the CLI do."""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response

from muxproxy import keys
from muxproxy.console.pages import Ctx, Form, page
from muxproxy.keyadmin import KeyAdmin
from muxproxy.store import ApiKey


def _admin(ctx: Ctx) -> KeyAdmin:
    return KeyAdmin(ctx.state.store, ctx.state.clock, ctx.state.auth.forget)


def _number(text: str) -> Any:
    """Digits as a number; other text as itself, for the key rules to refuse."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 40 else text


def limit_fields(form: Form, *, leave_empty_out: bool) -> dict[str, Any]:
    """The limits as the key rules take them. An empty box clears a limit (null);
    on a new key it is left out, which is the same."""
    fields: dict[str, Any] = {}
    for field in keys.LIMIT_FIELDS:
        text = form.get(field.name)
        if field.kind == "flag":
            fields[field.name] = field.name in form.fields
        elif not text:
            if not leave_empty_out:
                fields[field.name] = None
        elif field.kind == "number":
            fields[field.name] = _number(text)
        else:
            fields[field.name] = [item for item in re.split(r"[\s,]+", text) if item]
    return fields


@page(operator=True)
async def list_keys(ctx: Ctx) -> Response:
    found = await _admin(ctx).list_keys()
    return ctx.render("keys.html", keys=found, models=sorted(ctx.state.settings.models))


@page(operator=True)
async def create_key(ctx: Ctx) -> Response:
    form = await ctx.form()
    fields: dict[str, Any] = {"name": form.get("name"),
                              "credits": _number(form.get("credits") or "0")}
    fields.update(limit_fields(form, leave_empty_out=True))
    key, secret = await _admin(ctx).create(fields)
    # Shown once, on this answer, which no cache keeps.
    return ctx.render("key_created.html", key=key, secret=secret)


async def _key(ctx: Ctx) -> ApiKey:
    return await _admin(ctx).by_id(ctx.request.path_params["key"])


@page(operator=True)
async def show_key(ctx: Ctx) -> Response:
    admin = _admin(ctx)
    key = await _key(ctx)
    ledger = await admin.ledger(key, limit=50)
    return ctx.render("key.html", key=key, entries=ledger["entries"],
                      ledger_sum=ledger["ledger_sum"],
                      notice=ctx.request.query_params.get("done", ""))


@page(operator=True)
async def topup(ctx: Ctx) -> Response:
    form = await ctx.form()
    key = await _key(ctx)
    fields = {"amount": _number(form.get("amount")), "note": form.get("note") or None}
    if form.get("direction") == "deduct":
        await _admin(ctx).deduct(key, fields)
    else:
        await _admin(ctx).topup(key, fields)
    return ctx.redirect(f"/keys/{key.id}", done="credits")


@page(operator=True)
async def set_limits(ctx: Ctx) -> Response:
    form = await ctx.form()
    key = await _key(ctx)
    await _admin(ctx).set_limits(key, limit_fields(form, leave_empty_out=False))
    return ctx.redirect(f"/keys/{key.id}", done="limits")


@page(operator=True)
async def revoke(ctx: Ctx) -> Response:
    form = await ctx.form()
    key = await _key(ctx)
    if form.get("confirm") != "yes":
        return ctx.redirect(f"/keys/{key.id}", done="not-revoked")
    await _admin(ctx).revoke(key)
    return ctx.redirect(f"/keys/{key.id}", done="revoked")
