"""Which of a model's routes can serve a job: in order, skipping providers that
cannot work (an upstream that needs a key and was given none)."""

from __future__ import annotations

from collections.abc import Mapping

from muxproxy.providers.base import Provider
from muxproxy.settings import ModelSettings, RouteSettings


def next_route(model: ModelSettings, providers: Mapping[str, Provider],
               after: int = -1) -> tuple[int, RouteSettings] | None:
    """The first usable route with an index greater than ``after``."""
    for index in range(after + 1, len(model.routes)):
        route = model.routes[index]
        if providers[route.provider].configured:
            return index, route
    return None
