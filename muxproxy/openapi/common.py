"""Small builders for the OpenAPI document: JSON Schema objects, bodies, answers.

Every surface module returns a :class:`Part` (its paths and its named schemas);
``build_document`` puts them together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from muxproxy import validation

Schema = dict[str, Any]

# Security requirements: any one of the alternatives in a list will do.
API_KEY: list[dict[str, list[str]]] = [{"bearerKey": []}, {"apiKeyHeader": []}]
ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
NO_AUTH: list[dict[str, list[str]]] = []

STATUS_TEXT = {
    200: "OK", 201: "Created", 400: "Bad request", 401: "Unauthorized",
    402: "Insufficient credits", 403: "Forbidden", 404: "Not found", 409: "Conflict",
    413: "Payload too large", 415: "Unsupported media type", 416: "Range not satisfiable",
    422: "Unprocessable",
    429: "Too many requests", 500: "Internal error", 502: "Upstream failed",
    503: "Unavailable", 504: "Timed out",
}


@dataclass
class Part:
    paths: dict[str, dict[str, Any]] = field(default_factory=dict)
    schemas: dict[str, Schema] = field(default_factory=dict)


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Mapping[str, Schema], required: Sequence[str] = (), *,
        closed: bool = True, description: str | None = None) -> Schema:
    """An object schema; ``closed`` refuses properties not listed."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def nullable(schema: Schema) -> Schema:
    """``schema``, or null (which the gateway reads as a field left out)."""
    kind = schema.get("type")
    if isinstance(kind, str):
        out = {**schema, "type": [kind, "null"]}
        if "enum" in schema:
            out["enum"] = [*schema["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def string(description: str | None = None, **rules: Any) -> Schema:
    schema: Schema = {"type": "string", **rules}
    if description:
        schema["description"] = description
    return schema


def integer(description: str | None = None, **rules: Any) -> Schema:
    schema: Schema = {"type": "integer", **rules}
    if description:
        schema["description"] = description
    return schema


def millis(description: str) -> Schema:
    return integer(f"{description}, in milliseconds since the epoch")


def url(description: str) -> Schema:
    """An http(s) URL as ``validation.http_url`` accepts it."""
    return string(description, maxLength=validation.MAX_URL_CHARS,
                  pattern=validation.HTTP_URL_PATTERN)


def whole_number(low: int, high: int, description: str) -> Schema:
    """An integer in range; JSON bodies may also carry it as a string of digits
    (``validation.integer``), as multipart forms always do."""
    return {"description": description,
            "anyOf": [integer(minimum=low, maximum=high),
                      string(pattern=validation.DIGITS_PATTERN)]}


def as_text(schema: Schema) -> Schema:
    """A field's schema as a multipart text part: always a string, never null."""
    if "type" in schema:
        return {**schema, "type": "string"}
    return string(schema.get("description"))


def choice(values: Sequence[str], description: str | None = None) -> Schema:
    return string(description, enum=list(values))


def json_body(schema: Schema, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


# Headers shared by many answers, kept once under components/headers.
HEADERS: dict[str, Any] = {
    "RequestId": {"description": "The request's id, as on the gateway's log lines (the "
                                 "client's own x-request-id when it is safe to reuse).",
                  "required": True, "schema": {"type": "string"}},
    "RetryAfter": {"description": "Seconds to wait before trying again.", "required": True,
                   "schema": {"type": "string", "pattern": "^[0-9]+$"}},
}
REQUEST_ID = {"x-request-id": {"$ref": "#/components/headers/RequestId"}}
RETRY_AFTER = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}


def answer(description: str, schema: Schema | None = None, *,
           media_type: str = "application/json",
           headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "headers": {**REQUEST_ID, **(headers or {})}}
    if schema is not None:
        response["content"] = {media_type: {"schema": schema}}
    return response


def presigned_redirect() -> dict[str, Any]:
    """The 302 of an image download with storage.redirect on a storage that presigns."""
    return answer("With storage.redirect: the bucket's presigned URL for the image, living "
                  "no longer than the link (or storage.url_ttl_seconds); the bytes never pass "
                  "through the gateway.",
                  headers={"Location": {"schema": {"type": "string", "format": "uri"}}})


STORAGE_503 = ("the image storage is unreachable (or the database busy); retry after "
               "Retry-After.")


def errors(shape: str, reasons: Mapping[int, str]) -> dict[str, dict[str, Any]]:
    """Error answers in one surface's error shape, by status. Wherever the gateway
    may fail (500), its own database may too: 503 with Retry-After."""
    if 500 in reasons and 503 not in reasons:
        reasons = {**reasons, 503: "the gateway's database is busy or failing; retry "
                                   "after Retry-After."}
    out = {}
    for status, reason in reasons.items():
        headers = RETRY_AFTER if status in (429, 503) else None
        out[str(status)] = answer(f"{STATUS_TEXT[status]}: {reason}", ref(shape),
                                  headers=headers)
    return out


def operation(summary: str, tag: str, responses: Mapping[str, Any], *,
              security: list[dict[str, list[str]]], body: dict[str, Any] | None = None,
              parameters: Sequence[Mapping[str, Any]] = (),
              description: str | None = None, operation_id: str) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag],
                          "security": security, "responses": dict(responses)}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = [dict(p) for p in parameters]
    if body is not None:
        op["requestBody"] = body
    return op


def query(name: str, schema: Schema, description: str, *,
          required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


def history_params() -> list[dict[str, Any]]:
    """``limit`` and ``before`` of the list endpoints (``muxproxy/history.py``)."""
    return [
        # Empty is the same as left out.
        query("limit", string(pattern="^[0-9]*$"), "How many, 1 to 100 (default 20)."),
        query("before", string(pattern=r"^([0-9]{1,15}(\.[A-Za-z0-9_-]{1,64})?)?$"),
              "The nextCursor of the page before (or a time in ms: jobs created earlier)."),
    ]


def path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": string(minLength=1)}


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Makes a create call safe to retry: the same key and body within "
                   "limits.idempotency_ttl_seconds answer with the job the first call "
                   "created, as it stands now (Idempotent-Replayed: true), whatever the "
                   "first answer was, and create nothing; the same key with another body "
                   "is a 422, a retry while the first is still creating its job a 409.",
    "schema": string(minLength=1, maxLength=255),
}
