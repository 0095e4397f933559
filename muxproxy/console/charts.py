"""Bar charts drawn on the server: the geometry of each bar, which the templates
turn into SVG (no script, no styles of its own, so the strict CSP holds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    top: int  # the value the full height stands for
    horizontal: bool = False

    @property
    def empty(self) -> bool:
        return not any(bar.value for bar in self.bars)


def columns(title: str, points: Sequence[tuple[str, int]], *, width: int = 600,
            height: int = 160) -> Chart:
    """One column per point, left to right, rising from the bottom."""
    top = max((value for _, value in points), default=0) or 1
    step = width / max(len(points), 1)
    gap = min(2.0, step / 4)
    bars = tuple(Bar(label, value, x=i * step + gap / 2, y=height - value / top * height,
                     width=step - gap, height=value / top * height)
                 for i, (label, value) in enumerate(points))
    return Chart(title, width, height, bars, top)


def rows(title: str, points: Sequence[tuple[str, int]], *, width: int = 600,
         row_height: int = 24, label_width: int = 200) -> Chart:
    """One row per point, top to bottom, growing right from a column of labels."""
    top = max((value for _, value in points), default=0) or 1
    room = width - label_width - 60  # the value is written after its bar
    bars = tuple(Bar(label, value, x=label_width, y=i * row_height + 3,
                     width=max(value / top * room, 1.0), height=row_height - 6)
                 for i, (label, value) in enumerate(points))
    return Chart(title, width, max(len(points), 1) * row_height, bars, top, horizontal=True)
