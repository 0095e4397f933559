"""The whole OpenAPI document: each surface's part, in the registry's order."""

from __future__ import annotations

import functools
from typing import Any

import orjson

from muxproxy.openapi import VERSION
from muxproxy.openapi.common import HEADERS
from muxproxy.settings import Settings
from muxproxy.surfaces.registry import SURFACES


def build_document(settings: Settings) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for surface in SURFACES:
        part = surface.openapi(settings)
        for path, operations in part.paths.items():
            paths.setdefault(path, {}).update(operations)
        schemas.update(part.schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "muxproxy",
            "version": VERSION,
            "description": (
                "A reverse proxy and webhook relay for image-generation APIs, with three "
                "client surfaces over one job table: the native task API, an "
                "OpenAI-compatible API and a ModelMux-style API. Each surface answers "
                "errors in its own shape; unknown paths under /v1/ and "
                "/api/v1/generations answer in theirs, anything else in the native one."),
        },
        "servers": [{"url": settings.server.public_url}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "headers": HEADERS,
            "securitySchemes": {
                "bearerKey": {"type": "http", "scheme": "bearer",
                              "description": "An API key: Authorization: Bearer KEY."},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key",
                                 "description": "The same API key, as x-api-key: KEY."},
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "The admin.token from the config (not an "
                                              "API key)."},
            },
        },
    }


class OpenApiDocument:
    """The document as served, built on first request: the settings it describes
    do not change while the app runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @functools.cached_property
    def _body(self) -> bytes:
        return orjson.dumps(build_document(self.settings))

    def body(self) -> bytes:
        return self._body
