"""Upstream providers, chosen by ``kind`` from a table of names.

Each kind lives in its own module and is imported only when a configured provider
uses it. A kind judges its own settings when the config loads
(:meth:`Provider.validate <muxproxy.providers.base.Provider.validate>`).
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from muxproxy.clock import Clock
from muxproxy.generation import GenerationRequest
from muxproxy.providers.base import Provider
from muxproxy.settings import ModelSettings, ProviderSettings, RouteSettings
from muxproxy.settings_checks import choose

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


def provider_class(kind: str, where: str = "") -> type[Provider]:
    cls: type[Provider] = choose(KINDS, kind, where, "provider kind")
    return cls


def validate_provider(settings: ProviderSettings) -> None:
    """Refuse, naming the key, a provider whose kind is unknown or cannot work with
    its settings."""
    provider_class(settings.kind, f"providers.{settings.name}.kind").validate(settings)


def build_providers(settings: Mapping[str, ProviderSettings] | None,
                    http: aiohttp.ClientSession, clock: Clock) -> dict[str, Provider]:
    providers = {}
    for name, ps in (settings or {}).items():
        validate_provider(ps)
        providers[name] = provider_class(ps.kind)(ps, http, clock)
    return providers


def next_route(model: ModelSettings, providers: Mapping[str, Provider],
               after: int = -1, request: GenerationRequest | None = None
               ) -> tuple[int, RouteSettings] | None:
    """The first of a model's routes, after index ``after``, whose provider can work
    (an upstream that needs a key and was given none cannot) and, given ``request``,
    honours every client option it asks for (``Provider.unhonoured``)."""
    for index in range(after + 1, len(model.routes)):
        provider = providers[model.routes[index].provider]
        if provider.configured and (request is None or provider.unhonoured(request) is None):
            return index, model.routes[index]
    return None
