"""The HTTP surfaces: one module per client-facing API, put together in
:mod:`muxproxy.surfaces.registry`."""

from __future__ import annotations

from enum import StrEnum


class SurfaceName(StrEnum):
    """Each surface's name. A job records the one that created it (native, openai or
    modelmux); the callback's payload and the polling answers do not depend on it."""

    NATIVE = "native"  # the native task API, seeds 001/002/004
    CALLBACKS = "callbacks"  # webhook management, in the native shape
    OPENAI = "openai"  # the OpenAI-compatible images API
    MODELMUX = "modelmux"  # the ModelMux-style generations API, seed 000
    ADMIN = "admin"  # keys, credits and usage, behind the admin token
    FILES = "files"  # signed downloads of result images
    OPS = "ops"  # liveness, readiness, metrics and the OpenAPI document
