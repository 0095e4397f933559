"""Upstream providers, chosen by ``kind`` from a table of names.

Each kind lives in its own module and is imported only when a configured provider
uses it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import aiohttp

from muxproxy.clock import Clock
from muxproxy.providers.base import Provider
from muxproxy.settings import ProviderSettings, SettingsError

KINDS: dict[str, str] = {
    "demo": "muxproxy.providers.demo:DemoProvider",
    "gemini": "muxproxy.providers.gemini:GeminiProvider",
    "bfl": "muxproxy.providers.bfl:BflProvider",
    "openai": "muxproxy.providers.openai:OpenAIProvider",
    "openai-compatible": "muxproxy.providers.openai_compatible:OpenAICompatibleProvider",
    "xai": "muxproxy.providers.xai:XAIProvider",
    "fal": "muxproxy.providers.fal:FalProvider",
    "replicate": "muxproxy.providers.replicate:ReplicateProvider",
    "task": "muxproxy.providers.task:TaskProvider",
}


def provider_class(kind: str) -> type[Provider]:
    try:
        target = KINDS[kind]
    except KeyError:
        raise SettingsError(f"unknown provider kind {kind!r}; known: {', '.join(sorted(KINDS))}"
                            ) from None
    module_name, _, attr = target.partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module_name), attr)
    return cls


def build_providers(settings: Mapping[str, ProviderSettings] | None,
                    http: aiohttp.ClientSession, clock: Clock) -> dict[str, Provider]:
    return {name: provider_class(ps.kind)(ps, http, clock)
            for name, ps in (settings or {}).items()}
