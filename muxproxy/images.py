"""Image facts shared by every layer: formats, sniffing, pixel sizes."""

from __future__ import annotations

import io
import math
import re
import struct

from PIL import Image

FORMATS: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS: dict[str, str] = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp",
                              "image/gif": "gif"}
RESOLUTIONS: dict[str, int] = {"1k": 1024, "2k": 2048, "4k": 4096}
# ASCII digits only, matched in full (``$`` alone would let a trailing newline in);
# the OpenAPI document quotes these patterns.
ASPECT_RATIO = re.compile(r"^([0-9]{1,2}(?:\.[0-9])?):([0-9]{1,2}(?:\.[0-9])?)$")
SIZE = re.compile(r"^([0-9]{2,5})x([0-9]{2,5})$")
MIN_SIDE, MAX_SIDE = 64, 4096


def sniff(data: bytes) -> str | None:
    """The image content type judged by the bytes themselves, or None if not an image."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def dimensions(data: bytes) -> tuple[int | None, int | None]:
    """An image's width and height, or (None, None) when they cannot be read.

    A PNG carries them at a fixed offset, read here directly (opening the image
    with Pillow would cost more, on the path of every job); other formats go
    through Pillow. (A GIF's header has its logical screen, which its first frame
    may outgrow: Pillow reports the larger size.)"""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack_from(">II", data, 16)
        return (width, height) if width and height else (None, None)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # Pillow raises a zoo of types for odd files; size is optional
        return None, None


def normalize_format(value: str) -> str | None:
    value = value.lower()
    return "jpeg" if value == "jpg" else value if value in FORMATS else None


def parse_size(value: str) -> tuple[int, int] | None:
    match = SIZE.fullmatch(value)
    if not match:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        return None
    return width, height


def parse_ratio(value: str) -> float | None:
    match = ASPECT_RATIO.fullmatch(value)
    if not match:
        return None
    w, h = float(match.group(1)), float(match.group(2))
    if w <= 0 or h <= 0 or not (1 / 4 <= w / h <= 4):
        return None
    return w / h


def _round16(value: float) -> int:
    return max(MIN_SIDE, round(value / 16) * 16)


def pixel_size(size: tuple[int, int] | None, aspect_ratio: str | None,
               resolution: str | None) -> tuple[int, int]:
    """The output size: ``size`` wins; else the ratio at the resolution's pixel area.

    ``1k`` means about 1024x1024 pixels of area, as Gemini's ``imageSize`` does
    (16:9 at 1k is 1360x768).
    """
    if size is not None:
        return size
    ratio = parse_ratio(aspect_ratio) if aspect_ratio and aspect_ratio != "auto" else None
    ratio = ratio or 1.0
    side = RESOLUTIONS.get((resolution or "1k").lower(), 1024)
    area = side * side
    width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)
    scale = min(1.0, MAX_SIDE / max(width, height))  # shrink both sides: keep the ratio
    return _round16(width * scale), _round16(height * scale)
