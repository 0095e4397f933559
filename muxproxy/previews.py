"""Previews of result images small enough for MCP clients: scaled down to fit a
square box, re-encoded as JPEG (PNG where the image has transparency). The full
image stays behind its link and its resource URI."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Preview:
    data: bytes
    content_type: str
    width: int
    height: int
    # The stored image's own size, when the preview is smaller.
    scaled_from: tuple[int, int] | None


def preview(data: bytes, max_side: int) -> Preview:
    """``data`` fitted into ``max_side`` pixels a side. CPU-bound: run it in a thread."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        original = image.size
        has_alpha = image.mode in ("RGBA", "LA") or "transparency" in image.info
        converted = image.convert("RGBA" if has_alpha else "RGB")
    converted.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if has_alpha:
        converted.save(out, "PNG", optimize=True)
        content_type = "image/png"
    else:
        converted.save(out, "JPEG", quality=85, optimize=True)
        content_type = "image/jpeg"
    scaled = converted.size != original
    return Preview(out.getvalue(), content_type, converted.width, converted.height,
                   original if scaled else None)
