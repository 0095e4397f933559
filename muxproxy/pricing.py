"""What a request costs, in credits, known before it runs."""

from __future__ import annotations

from collections.abc import Mapping

from muxproxy import images
from muxproxy.errors import InvalidRequest
from muxproxy.generation import GenerationRequest
from muxproxy.settings import ModelSettings

# Quality names clients send, mapped to the tiers a price table may list.
QUALITY_TIERS: Mapping[str, str] = {"low": "standard", "standard": "standard",
                                    "medium": "medium", "hd": "high", "high": "high"}


def resolution_of(request: GenerationRequest) -> str:
    """The request's resolution tier: as given, or judged from ``size`` by pixel area."""
    if request.resolution:
        return request.resolution
    if request.size is None:
        return "1k"
    area = request.size[0] * request.size[1]
    return "1k" if area <= 1_600_000 else "2k" if area <= 6_000_000 else "4k"


def price(model: ModelSettings, request: GenerationRequest) -> int:
    """Credits for the whole request (all ``n`` images).

    Raises InvalidRequest for a resolution or quality the model's table lacks.
    """
    table = model.credits
    if isinstance(table, int):
        return table * request.n
    resolution = resolution_of(request)
    entry = table.get(resolution)
    if entry is None:
        raise InvalidRequest(f"model {model.id!r} does not offer resolution {resolution!r}; "
                             f"choose one of {', '.join(table)}", param="resolution")
    if isinstance(entry, int):
        return entry * request.n
    quality = request.quality
    if quality is None or quality == "auto":
        return next(iter(entry.values())) * request.n
    tier = QUALITY_TIERS.get(quality, quality)
    if tier not in entry:
        raise InvalidRequest(f"model {model.id!r} does not offer quality {quality!r}; "
                             f"choose one of {', '.join(entry)}", param="quality")
    return entry[tier] * request.n


def check_capabilities(model: ModelSettings, request: GenerationRequest) -> None:
    """Refuse resolutions and aspect ratios the model's config does not list."""
    if model.resolutions and (request.resolution or request.size):
        # A pixel size counts as the tier of its area, as it is priced.
        tier = resolution_of(request)
        if tier not in model.resolutions:
            param = "resolution" if request.resolution else "size"
            raise InvalidRequest(f"model {model.id!r} supports resolution "
                                 f"{', '.join(model.resolutions)}, not {tier!r}", param=param)
    ratio = request.aspect_ratio
    if model.aspect_ratios and ratio and ratio != "auto" and ratio not in model.aspect_ratios:
        raise InvalidRequest(f"model {model.id!r} supports aspect ratios "
                             f"{', '.join(model.aspect_ratios)}, not {ratio!r}",
                             param="aspect_ratio")
    if request.size is not None and images.parse_size(f"{request.size[0]}x{request.size[1]}") \
            is None:
        raise InvalidRequest("unsupported size", param="size")
