"""What a request costs, in credits, known before it runs."""

from __future__ import annotations

from collections.abc import Mapping

from muxproxy import images
from muxproxy.errors import InvalidRequest
from muxproxy.generation import QUALITY_TIERS, GenerationRequest
from muxproxy.pipeline.jobs import evolve
from muxproxy.settings import ModelSettings

__all__ = ["QUALITY_TIERS", "billed", "check_capabilities", "price", "resolution_of"]


def resolution_of(request: GenerationRequest) -> str:
    """The request's resolution tier: as given, or judged from ``size`` by pixel area."""
    if request.resolution:
        return request.resolution
    if request.size is None:
        return "1k"
    area = request.size[0] * request.size[1]
    return "1k" if area <= 1_600_000 else "2k" if area <= 6_000_000 else "4k"


def _entry(model: ModelSettings, request: GenerationRequest) -> int | Mapping[str, int]:
    """The price per image, or its quality tiers, at the request's resolution."""
    table = model.credits
    if isinstance(table, int):
        return table
    resolution = resolution_of(request)
    entry = table.get(resolution)
    if entry is None:
        raise InvalidRequest(f"model {model.id!r} does not offer resolution {resolution!r}; "
                             f"choose one of {', '.join(table)}", param="resolution")
    return entry


def billed(model: ModelSettings, request: GenerationRequest) -> GenerationRequest:
    """The request with the quality it is priced at, to be sent upstream as is.

    A quality left out or ``auto`` lets the upstream pick, up to its dearest tier;
    so it becomes the model's ``default_quality``, else the dearest tier of its
    price entry. Price and work then agree, and the bill is never the lesser.
    """
    if request.quality not in (None, "auto"):
        return request
    quality = model.default_quality
    if not quality:
        entry = _entry(model, request)
        if isinstance(entry, int):
            return request
        quality = max(entry, key=entry.__getitem__)
    return evolve(request, quality=quality)


def price(model: ModelSettings, request: GenerationRequest) -> int:
    """Credits for the whole request (all ``n`` images), at its :func:`billed` quality.

    Raises InvalidRequest for a resolution or quality the model's table lacks.
    """
    entry = _entry(model, request)
    if isinstance(entry, int):
        return entry * request.n
    quality = billed(model, request).quality
    assert quality is not None  # billed() names one for every table with tiers
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
