"""Endpoints without an API key: health, readiness, metrics, this document, and the
signed image links (``surfaces/ops.py``, ``surfaces/files.py``)."""

from __future__ import annotations

from typing import Any

from muxproxy.openapi.common import (
    NO_AUTH,
    STORAGE_503,
    Part,
    Schema,
    answer,
    choice,
    errors,
    obj,
    operation,
    path_param,
    presigned_redirect,
    string,
)
from muxproxy.settings import Settings

TAG = "Operations"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif",
               "application/octet-stream")


def _download(summary: str, operation_id: str) -> dict[str, Any]:
    image = {"type": "string", "format": "binary"}
    found = answer("The image (no body for HEAD).")
    found["content"] = {ctype: {"schema": image} for ctype in IMAGE_TYPES}
    return operation(
        summary, "Files", operation_id=operation_id, security=NO_AUTH,
        parameters=[path_param("token", "The signature (it names the file and its time)."),
                    path_param("name", "The file name, for the client's benefit.")],
        description="The links in resultUrls, outputUrl and url: they need no key, and "
                    "expire after storage.url_ttl_seconds (poll again for fresh ones).",
        responses={"200": found, "302": presigned_redirect(),
                   **errors("NativeError", {400: "the Range header is malformed.",
                                            403: "the link is expired or its signature wrong.",
                                            404: "the file is gone (or its retention "
                                                 "passed).",
                                            416: "the Range is past the end of the file.",
                                            500: "unexpected server error.",
                                            503: STORAGE_503})})


def part(settings: Settings) -> Part:
    circuits: Schema = {"type": "object", "description": "Each provider's circuit breaker.",
                        "additionalProperties": choice(["closed", "open", "half_open"])}
    signals = choice(["local", "listening", "reconnecting"],
                     "The listener of other processes' signals: none travel for a lone "
                     "process (local).")
    shown = ["status", "store", "storage", "providers", "signals"]
    ready = obj({"status": {"const": "ready"}, "store": {"const": "ok"},
                 "storage": {"const": "ok"}, "providers": circuits, "signals": signals}, shown)
    unready = obj({"status": {"const": "unavailable"}, "store": choice(["ok", "unreachable"]),
                   "storage": choice(["ok", "failing"]), "providers": circuits,
                   "signals": signals}, shown)
    paths: dict[str, dict[str, Any]] = {
        "/healthz": {"get": operation(
            "Liveness", TAG, operation_id="healthz", security=NO_AUTH,
            responses={"200": answer("The process is up.",
                                     obj({"status": {"const": "ok"}}, ["status"]))})},
        "/readyz": {"get": operation(
            "Readiness", TAG, operation_id="readyz", security=NO_AUTH,
            responses={"200": answer("The job store and the image storage work.", ready),
                       "503": answer("The job store or the image storage is failing.",
                                     unready)})},
        "/metrics": {"get": operation(
            "Prometheus metrics", TAG, operation_id="metrics", security=NO_AUTH,
            description="Open, unless metrics.token is set: then it takes "
                        "'Authorization: Bearer TOKEN'.",
            responses={"200": answer("Metrics in the Prometheus text format.", string(),
                                     media_type="text/plain"),
                       **errors("NativeError", {401: "metrics.token is set and the "
                                                     "request did not send it."})})},
        "/openapi.json": {"get": operation(
            "This document", TAG, operation_id="openapi", security=NO_AUTH,
            responses={"200": answer("The OpenAPI 3.1 document.", {"type": "object"})})},
    }
    return Part(paths=paths)


def files_part(settings: Settings) -> Part:
    paths: dict[str, dict[str, Any]] = {
        "/files/{token}/{name}": {
            "get": _download("Download an image by its signed link", "downloadFile"),
            "head": _download("Check a signed link", "headFile"),
        },
    }
    return Part(paths=paths)
