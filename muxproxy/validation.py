"""Field checks shared by the surfaces. Each raises InvalidRequest naming the field."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from muxproxy import images
from muxproxy.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from muxproxy.settings import LimitSettings

QUALITIES = frozenset({"auto", "low", "medium", "high", "xhigh", "max", "standard",
                       "hd"})
# Patterns matched in full, and quoted by the OpenAPI document (ECMA-262 reads them
# the same way). A URL may hold no control character and no kind of white space,
# so nothing can split a header line or hide in a log.
MAX_URL_CHARS = 4096
HTTP_URL_PATTERN = (r"^[hH][tT][tT][pP][sS]?://[^\x00-\x20\x7f-\x9f\u00a0\u1680"
                    r"\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+$")
_HTTP_URL = re.compile(HTTP_URL_PATTERN)
# A whole number sent as a string (multipart fields always are).
DIGITS_PATTERN = r"^[0-9]{1,18}$"
_DIGITS = re.compile(DIGITS_PATTERN)


@dataclass(frozen=True)
class UploadedImage:
    """A reference image the client sent inline; written to blob storage at submit."""

    data: bytes
    content_type: str


def string(body: Mapping[str, Any], name: str, *, required: bool = False,
           max_len: int = 2048) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"'{name}' is required", param=name)
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name)
    if required and not value.strip():
        raise InvalidRequest(f"'{name}' must not be empty", param=name)
    if len(value) > max_len:
        raise InvalidRequest(f"'{name}' is longer than {max_len} characters", param=name)
    if "\x00" in value:
        raise InvalidRequest(f"'{name}' contains a NUL character", param=name)
    return value


def prompt(body: Mapping[str, Any], limits: LimitSettings) -> str:
    value = string(body, "prompt", required=True, max_len=limits.max_prompt_chars)
    assert value is not None
    return value


def integer(body: Mapping[str, Any], name: str, *, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be an integer", param=name)
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}", param=name)
    return value


def size(body: Mapping[str, Any]) -> tuple[int, int] | None:
    value = string(body, "size", max_len=16)
    if value is None or value == "auto":
        return None
    parsed = images.parse_size(value)
    if parsed is None:
        raise InvalidRequest(f"unsupported size {value!r}: use WIDTHxHEIGHT with sides "
                             f"{images.MIN_SIDE}-{images.MAX_SIDE}, or 'auto'", param="size")
    return parsed


def aspect_ratio(body: Mapping[str, Any], name: str = "aspect_ratio") -> str | None:
    value = string(body, name, max_len=16)
    if value is None or value == "auto":
        return value
    if images.parse_ratio(value) is None:
        raise InvalidRequest(f"unsupported {name} {value!r}: use W:H between 1:4 and 4:1",
                             param=name)
    return value


def resolution(body: Mapping[str, Any]) -> str | None:
    value = string(body, "resolution", max_len=8)
    if value is None:
        return None
    if value.lower() not in images.RESOLUTIONS:
        raise InvalidRequest(f"unsupported resolution {value!r}: use 1k, 2k or 4k",
                             param="resolution")
    return value.lower()


def quality(body: Mapping[str, Any]) -> str | None:
    value = string(body, "quality", max_len=16)
    if value is not None and value not in QUALITIES:
        raise InvalidRequest(f"unsupported quality {value!r}: use one of "
                             f"{', '.join(sorted(QUALITIES))}", param="quality")
    return value


def output_format(body: Mapping[str, Any]) -> str | None:
    value = string(body, "output_format", max_len=8)
    if value is None:
        return None
    fmt = images.normalize_format(value)
    if fmt is None:
        # gif and svg too (openai-python lists them): no provider here renders them.
        raise InvalidRequest(f"unsupported output_format {value!r}: use png, jpeg or webp",
                             param="output_format")
    return fmt


def http_url(value: Any, name: str, *, allow_data: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a URL string", param=name)
    if allow_data and value.startswith("data:"):
        return value
    if len(value) > MAX_URL_CHARS:
        raise InvalidRequest(f"'{name}' is longer than {MAX_URL_CHARS} characters", param=name)
    if not _HTTP_URL.fullmatch(value):
        if value[:8].lower().startswith(("http://", "https://")):
            raise InvalidRequest(f"'{name}' is not a valid URL: it contains white space or "
                                 "a control character", param=name)
        raise InvalidRequest(f"'{name}' must be an http(s) URL", param=name)
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise InvalidRequest(f"'{name}' is not a valid URL", param=name) from None
    if not host:
        raise InvalidRequest(f"'{name}' must be an http(s) URL with a host", param=name)
    try:
        host.encode("idna")  # what a lookup does first: empty or overlong labels fail here
    except UnicodeError:
        raise InvalidRequest(f"'{name}' has an invalid host name", param=name) from None
    return value


def decode_image(value: Any, name: str, limits: LimitSettings) -> UploadedImage:
    """Base64 (optionally as a ``data:`` URI) to image bytes, checked by content."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' must be a base64 string", param=name)
    payload = value
    if value.startswith("data:"):
        _, comma, payload = value.partition(",")
        if not comma:
            raise InvalidRequest(f"'{name}' is not a valid data URI: no ',' before the "
                                 "data", param=name)
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise PayloadTooLarge(f"'{name}' is larger than {limits.max_image_bytes} bytes",
                              param=name)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"'{name}' is not valid base64", param=name) from None
    return image_bytes(data, name, limits)


def image_bytes(data: bytes, name: str, limits: LimitSettings) -> UploadedImage:
    if len(data) > limits.max_image_bytes:
        raise PayloadTooLarge(f"'{name}' is larger than {limits.max_image_bytes} bytes",
                              param=name)
    content_type = images.sniff(data)
    if content_type is None:
        raise UnsupportedMediaType(f"'{name}' is not a PNG, JPEG, WebP or GIF image",
                                   param=name)
    return UploadedImage(data=data, content_type=content_type)


def unknown_fields(body: Mapping[str, Any], known: frozenset[str]) -> None:
    extra = sorted(set(body) - known)
    if extra:
        raise InvalidRequest(f"unknown field{'s' if len(extra) > 1 else ''}: "
                             f"{', '.join(extra)}", param=extra[0])
