"""The admin API (``surfaces/admin.py``): keys, credits, limits, ledger, usage;
answers only to ``admin.token``; errors are ``{"error", "code"}``."""

from __future__ import annotations

from typing import Any

from muxproxy import keys
from muxproxy.openapi.common import (
    ADMIN,
    Part,
    Schema,
    answer,
    choice,
    errors,
    integer,
    json_body,
    millis,
    nullable,
    obj,
    operation,
    path_param,
    query,
    ref,
    string,
)
from muxproxy.settings import Settings
from muxproxy.store.accounts import LedgerKind

TAG = "Admin API"
SHAPE = "AdminError"
AUTH = {401: "the admin API is disabled (no admin.token), or the token is wrong.",
        500: "unexpected server error."}
BODY = {400: "malformed JSON, an unknown field, or an invalid value (param names it).",
        413: "the body is over 64 KiB."}
FOUND = {404: "no key with this id (keys are addressed by id, not by name)."}


def limit_schema(field: keys.LimitField) -> Schema:
    help = field.help[0].upper() + field.help[1:] + "."
    if field.kind == "flag":
        return {"type": "boolean", "description": help}
    if field.kind == "number":
        return nullable(integer(help, minimum=1, maximum=keys.MAX_LIMIT))
    return nullable({"type": "array", "items": string(minLength=1), "description": help})


def limit_fields() -> dict[str, Schema]:
    return {field.name: limit_schema(field) for field in keys.LIMIT_FIELDS}


def schemas() -> dict[str, Schema]:
    key = obj({
        "id": string(f"{keys.KEY_ID_PREFIX} and 16 hex digits; addresses the key.",
                     pattern=f"^{keys.KEY_ID_PREFIX}"),
        "name": string(), "created_at": millis("When it was made"),
        "revoked_at": nullable(integer()), "balance": integer("Credits."),
        **limit_fields(),
    }, ["id", "name", "created_at", "revoked_at", "balance", *(f.name for f in keys.LIMIT_FIELDS)])
    entry = obj({"id": integer(), "kind": choice([k.value for k in LedgerKind]),
                 "amount": integer(), "job_id": nullable(string()),
                 "model": nullable(string()), "note": nullable(string()),
                 "created_at": integer()},
                ["id", "kind", "amount", "job_id", "model", "note", "created_at"])
    day = obj({"day": string(pattern="^[0-9]{4}-[0-9]{2}-[0-9]{2}$"), "model": string(),
               "jobs": integer(), "completed": integer(), "failed": integer(),
               "credits": integer()},
              ["day", "model", "jobs", "completed", "failed", "credits"])
    return {
        SHAPE: obj({"error": string(), "code": string()}, ["error", "code"]),
        "AdminKey": key,
        "AdminKeyCreate": obj({
            "name": {**string(f"1-{keys.MAX_NAME_CHARS} characters, not only spaces, not "
                              f"beginning with {keys.KEY_ID_PREFIX!r} (the form of an id); "
                              "unique.", minLength=1, maxLength=keys.MAX_NAME_CHARS),
                     "not": {"pattern": f"^{keys.KEY_ID_PREFIX}"}},
            "credits": integer("Initial credits.", minimum=0, maximum=keys.MAX_CREDITS),
            **limit_fields()}, ["name"]),
        "AdminKeyCreated": obj({"key": ref("AdminKey"),
                                "secret": string("The API key itself, shown only here.")},
                               ["key", "secret"]),
        "AdminKeyList": obj({"keys": {"type": "array", "items": ref("AdminKey")}}, ["keys"]),
        "AdminLimits": obj(limit_fields()),
        "AdminCredits": obj({
            "amount": integer("Credits to add (topup) or take back (deduct); always positive.",
                              minimum=1, maximum=keys.MAX_CREDITS),
            "note": nullable(string(maxLength=keys.MAX_NOTE_CHARS))}, ["amount"]),
        "AdminLedger": obj({"key": ref("AdminKey"),
                            "entries": {"type": "array", "items": entry},
                            "ledger_sum": integer("The sum of all entries: the balance.")},
                           ["key", "entries", "ledger_sum"]),
        "AdminUsage": obj({"key": ref("AdminKey"), "days": integer(),
                           "usage": {"type": "array", "items": day}},
                          ["key", "days", "usage"]),
    }


def part(settings: Settings) -> Part:
    key_param = path_param("key", "The key's id (find it by name with GET /admin/keys?name=).")

    def op(summary: str, operation_id: str, ok: dict[str, Any],
           reasons: dict[int, str], **kw: Any) -> dict[str, Any]:
        return operation(summary, TAG, operation_id=operation_id, security=ADMIN,
                         responses={**ok, **errors(SHAPE, {**AUTH, **reasons})}, **kw)

    one_key = {"200": answer("The key.", ref("AdminKey"))}
    paths: dict[str, dict[str, Any]] = {
        "/admin/keys": {
            "post": op("Create an API key", "adminCreateKey",
                       {"201": answer("The key and its secret.", ref("AdminKeyCreated"))},
                       {**BODY, 409: "a key with this name exists."},
                       body=json_body(ref("AdminKeyCreate"))),
            "get": op("List the API keys, or find one by name", "adminListKeys",
                      {"200": answer("Every key, revoked ones too; with name, the key so "
                                     "named, if any.", ref("AdminKeyList"))},
                      {400: "name over 100 characters, or an unknown query parameter."},
                      parameters=[query("name", string(maxLength=keys.MAX_NAME_CHARS),
                                        "Only the key with exactly this name.")]),
        },
        "/admin/keys/{key}": {
            "get": op("One API key", "adminGetKey", one_key, FOUND,
                      parameters=[key_param]),
            "patch": op("Change a key's limits", "adminUpdateKey", one_key, {**BODY, **FOUND},
                        parameters=[key_param], body=json_body(ref("AdminLimits"))),
        },
        "/admin/keys/{key}/topup": {"post": op(
            "Add credits", "adminTopup", one_key, {**BODY, **FOUND},
            parameters=[key_param], body=json_body(ref("AdminCredits")))},
        "/admin/keys/{key}/deduct": {"post": op(
            "Take credits back (the balance may go below zero)", "adminDeduct", one_key,
            {**BODY, **FOUND}, parameters=[key_param], body=json_body(ref("AdminCredits")))},
        "/admin/keys/{key}/revoke": {"post": op(
            "Revoke a key", "adminRevokeKey", one_key, FOUND, parameters=[key_param])},
        "/admin/keys/{key}/ledger": {"get": op(
            "A key's credit ledger, newest first", "adminLedger",
            {"200": answer("The entries.", ref("AdminLedger"))},
            {400: "limit or before out of range.", **FOUND},
            parameters=[key_param,
                        query("limit", integer(minimum=1, maximum=1000),
                              "How many entries (default 100)."),
                        query("before", integer(minimum=0, maximum=2**62),
                              "Only entries with a smaller id.")])},
        "/admin/keys/{key}/usage": {"get": op(
            "Jobs and credits per model per day", "adminUsage",
            {"200": answer("The days.", ref("AdminUsage"))},
            {400: "days out of range.", **FOUND},
            parameters=[key_param, query("days", integer(minimum=1, maximum=3660),
                                         "How many days back (default 30).")])},
    }
    return Part(paths=paths, schemas=schemas())
