"""Small real images for upload tests."""

from __future__ import annotations

import io

from PIL import Image


def png_bytes(width: int = 32, height: int = 32, color: tuple[int, int, int] = (200, 30, 30)
              ) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size
