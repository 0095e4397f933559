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
FOUND = {404: "no key with this id or name."}


def limit_fields() -> dict[str, Schema]:
    positive = nullable(integer("null removes the limit.", minimum=1, maximum=keys.MAX_LIMIT))
    return {"unlimited": {"type": "boolean", "description": "Never refused for its balance."},
            "rpm": positive, "max_concurrent": positive,
            "models": nullable({"type": "array", "items": string(minLength=1),
                                "description": "The models the key may use; null: all."}),
            "webhook_allow_networks": nullable({
                "type": "array", "items": string(minLength=1), "maxItems": keys.MAX_NETWORKS,
                "description": "Private networks (CIDR) this key's callbacks may reach; "
                               "null or []: public addresses only."})}


def schemas() -> dict[str, Schema]:
    key = obj({
        "id": string(), "name": string(), "created_at": millis("When it was made"),
        "revoked_at": nullable(integer()), "balance": integer("Credits."),
        "unlimited": {"type": "boolean"}, "rpm": nullable(integer()),
        "max_concurrent": nullable(integer()),
        "models": nullable({"type": "array", "items": string()}),
        "webhook_allow_networks": {"type": "array", "items": string()},
    }, ["id", "name", "created_at", "revoked_at", "balance", "unlimited", "rpm",
        "max_concurrent", "models", "webhook_allow_networks"])
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
            "name": string("1-100 characters, not only spaces; unique.", minLength=1,
                           maxLength=100),
            "credits": integer("Initial credits.", minimum=0, maximum=keys.MAX_CREDITS),
            **limit_fields()}, ["name"]),
        "AdminKeyCreated": obj({"key": ref("AdminKey"),
                                "secret": string("The API key itself, shown only here.")},
                               ["key", "secret"]),
        "AdminKeyList": obj({"keys": {"type": "array", "items": ref("AdminKey")}}, ["keys"]),
        "AdminLimits": obj(limit_fields()),
        "AdminTopup": obj({
            "amount": {**integer("Credits to add (negative: remove).",
                                 minimum=-keys.MAX_CREDITS, maximum=keys.MAX_CREDITS),
                       "not": {"const": 0}},
            "note": nullable(string(maxLength=500))}, ["amount"], closed=False),
        "AdminLedger": obj({"key": ref("AdminKey"),
                            "entries": {"type": "array", "items": entry},
                            "ledger_sum": integer("The sum of all entries: the balance.")},
                           ["key", "entries", "ledger_sum"]),
        "AdminUsage": obj({"key": ref("AdminKey"), "days": integer(),
                           "usage": {"type": "array", "items": day}},
                          ["key", "days", "usage"]),
    }


def part(settings: Settings) -> Part:
    key_param = path_param("key", "The key's id or name.")

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
            "get": op("List the API keys", "adminListKeys",
                      {"200": answer("Every key, revoked ones too.", ref("AdminKeyList"))}, {}),
        },
        "/admin/keys/{key}": {
            "get": op("One API key", "adminGetKey", one_key, FOUND,
                      parameters=[key_param]),
            "patch": op("Change a key's limits", "adminUpdateKey", one_key, {**BODY, **FOUND},
                        parameters=[key_param], body=json_body(ref("AdminLimits"))),
        },
        "/admin/keys/{key}/topup": {"post": op(
            "Add or remove credits", "adminTopup", one_key, {**BODY, **FOUND},
            parameters=[key_param], body=json_body(ref("AdminTopup")))},
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
