"""Small real images for fake upstreams to hand out."""

from __future__ import annotations

import io

from PIL import Image


def solid(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (32, 24)
          ) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()
