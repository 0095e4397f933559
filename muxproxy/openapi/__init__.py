"""The OpenAPI 3.1 document of every HTTP endpoint, served at ``GET /openapi.json``.

Built from the settings, so limits, model ids and the public URL are the running
gateway's own. One module per surface, next to the surface it describes;
``tests/test_openapi_conformance.py`` checks real answers against it and
``tests/test_openapi_fuzz.py`` fuzzes every operation from it.
"""

from __future__ import annotations

from typing import Any

from muxproxy import __version__
from muxproxy.openapi import admin, modelmux, native, openai, ops
from muxproxy.openapi.common import HEADERS
from muxproxy.settings import Settings

VERSION = __version__


def build_document(settings: Settings) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for module in (native, openai, modelmux, admin, ops):
        part = module.part(settings)
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
