"""Request fields the surfaces share, as ``validation`` checks them."""

from __future__ import annotations

from muxproxy import images, validation
from muxproxy.openapi.common import Schema, choice, nullable, string, url
from muxproxy.settings import LimitSettings, Settings

# Patterns for values the gateway reads without regard to case.
RESOLUTION_PATTERN = "^[124][kK]$"
OUTPUT_FORMAT_PATTERN = "^([pP][nN][gG]|[jJ][pP][eE]?[gG]|[wW][eE][bB][pP])$"
BASE64_PATTERN = "^(data:[^,]*,)?[A-Za-z0-9+/]+={0,2}$"


def model(settings: Settings, *, required: bool) -> Schema:
    schema = string("A model id from the gateway's configuration (GET /v1/models lists "
                    "them).", maxLength=200)
    if settings.models:
        schema["enum"] = list(settings.models)
    return schema if required else nullable(schema)


def prompt(limits: LimitSettings) -> Schema:
    return string("What to draw. Must hold a non-space character; NUL is refused.",
                  minLength=1, maxLength=limits.max_prompt_chars)


def size() -> Schema:
    return nullable(string(
        f"WIDTHxHEIGHT with each side {images.MIN_SIDE}-{images.MAX_SIDE}, or 'auto'.",
        maxLength=16, pattern=f"^auto$|{images.SIZE.pattern}"))


def aspect_ratio() -> Schema:
    return nullable(string("W:H between 1:4 and 4:1, or 'auto'.", maxLength=16,
                           pattern=f"^auto$|{images.ASPECT_RATIO.pattern}"))


def resolution() -> Schema:
    return nullable(string("1k, 2k or 4k (about 1024, 2048 or 4096 pixels a side).",
                           maxLength=8, pattern=RESOLUTION_PATTERN))


def quality() -> Schema:
    return nullable(choice(sorted(validation.QUALITIES),
                           "Left out or auto: the model's default_quality (else its dearest "
                           "tier), which is both billed and sent upstream."))


def output_format() -> Schema:
    return nullable(string("png, jpeg (or jpg) or webp.", maxLength=8,
                           pattern=OUTPUT_FORMAT_PATTERN))


def base64_image(description: str) -> Schema:
    return string(f"{description} Base64, optionally as a data: URI; judged by its bytes "
                  "(PNG, JPEG, WebP or GIF).", minLength=1, pattern=BASE64_PATTERN)


def image_ref(description: str) -> Schema:
    """An inline image (base64) or an http(s) URL to one."""
    return {"description": description,
            "anyOf": [url("An http(s) URL to the image."), base64_image("The image.")]}
