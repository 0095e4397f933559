"""Fitting a request's size, aspect ratio and resolution to what an upstream takes.

A request names an explicit ``size`` (WxH), or an ``aspect_ratio`` and a
``resolution`` tier (1k/2k/4k, meaning about that side squared in pixels, as
:func:`muxproxy.images.pixel_size` has it). Upstreams take one of: a listed ratio
(:func:`nearest_ratio`), a listed size (:func:`nearest_size`), a resolution tier
(:func:`nearest_resolution`), a reduced ``W:H`` (:func:`reduced_ratio`), or free
pixel sizes within limits (:class:`PixelBox` and :func:`fit`). Ratios are compared
on a log scale, so too wide and too tall by the same factor count the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from muxproxy import images


def ratio_value(name: str) -> float:
    """``"W:H"`` as W/H; any listed name, including ratios a request may not ask
    for itself (Gemini's 1:8)."""
    width, _, height = name.partition(":")
    return float(width) / float(height)


def nearest_ratio(width: float, height: float, choices: Sequence[str]) -> str:
    """The listed ``W:H`` closest to ``width/height`` (the first listed on a tie)."""
    target = math.log(width / height)
    return min(choices, key=lambda choice: abs(math.log(ratio_value(choice)) - target))


def reduced_ratio(width: int, height: int) -> str:
    """``1360x768`` as ``"85:48"``: the exact ratio, for upstreams that take any."""
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


def orientation(ratio: float) -> int:
    """-1 portrait, 0 square (within 5%), 1 landscape."""
    log = math.log(ratio)
    return 0 if abs(log) < 0.05 else 1 if log > 0 else -1


def nearest_size(sizes: Sequence[tuple[int, int]], ratio: float) -> tuple[int, int] | None:
    """The listed size closest to ``ratio`` among those of its orientation, the
    largest on a tie; None when the list has none of that orientation."""
    same = [s for s in sizes if orientation(s[0] / s[1]) == orientation(ratio)]
    if not same:
        return None
    return min(same, key=lambda s: (abs(math.log(s[0] / s[1] / ratio)), -s[0] * s[1]))


def nearest_resolution(width: int, height: int, tiers: Sequence[str]) -> str:
    """The resolution tier (``"1k"``...) nearest to ``width x height`` by pixel area,
    on a log scale."""
    area = math.log(width * height)
    return min(tiers, key=lambda tier: abs(math.log(images.RESOLUTIONS[tier] ** 2) - area))


def ratio_size(ratio: float, resolution: str | None) -> tuple[float, float]:
    """Width and height of ``ratio`` at the pixel area of ``resolution`` (1k default)."""
    area = float(images.RESOLUTIONS.get(resolution or "1k", 1024) ** 2)
    return math.sqrt(area * ratio), math.sqrt(area / ratio)


@dataclass(frozen=True)
class PixelBox:
    """The pixel sizes an upstream renders: sides in multiples of ``multiple``
    between ``min_side`` and ``max_side``, at most ``max_area`` pixels."""

    multiple: int = 16
    min_side: int = 64
    max_side: int = 4096
    max_area: int = 4096 * 4096
    #: Round each side down to its multiple (OpenAI: never above the limits it
    #: states), rather than to the nearest multiple.
    round_down: bool = False


def fit(width: float, height: float, box: PixelBox) -> tuple[int, int]:
    """``width x height`` scaled down into ``box`` with its ratio kept, then each side
    rounded to the box's multiple and clamped to its sides."""
    scale = min(1.0, box.max_side / max(width, height),
                math.sqrt(box.max_area / (width * height)))
    step = box.multiple

    def side(value: float) -> int:
        value *= scale
        # The epsilon keeps an exact multiple computed as 3839.9999 at 3840.
        steps = int(value + 1e-6) // step if box.round_down else round(value / step)
        return max(box.min_side, min(box.max_side // step * step, steps * step))

    return side(width), side(height)
