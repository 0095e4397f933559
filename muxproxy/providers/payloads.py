"""Small pieces the JSON adapters share: reference images as URLs, error bodies,
aspect ratios an upstream can take."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from typing import Any

import aiohttp

from muxproxy import images
from muxproxy.providers.base import MAX_ERROR_BODY, Provider, Reference, read_limited
from muxproxy.providers.errors import UpstreamError


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


async def reference_url(provider: Provider, ref: Reference) -> str:
    """A URL the upstream can fetch: the client's own URL, else the bytes as a ``data:`` URI."""
    if ref.url is not None:
        return ref.url
    data, content_type = await provider.reference_bytes(ref)
    return data_uri(data, content_type)


async def error_body(response: aiohttp.ClientResponse) -> Any:
    """An error response's JSON body, or None when it has none (an HTML 502 page, a
    body too long to be an error message...)."""
    try:
        raw = await read_limited(response, MAX_ERROR_BODY)
        return json.loads(raw) if raw is not None else None
    except (ValueError, UnicodeDecodeError, aiohttp.ClientError, asyncio.IncompleteReadError):
        return None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def unexpected(provider: Provider, what: str) -> UpstreamError:
    """A 2xx answer we cannot read. Transient: the next poll or retry may read fine."""
    return UpstreamError(f"{provider.name}: unexpected upstream response: {what}",
                         transient=True, code="bad_upstream_response")


def nearest_ratio(width: int, height: int, choices: Sequence[str]) -> str:
    """The listed ``W:H`` closest to ``width/height``; too wide and too tall by the
    same factor count the same."""
    target = width / height

    def distance(choice: str) -> float:
        ratio = images.parse_ratio(choice) or 1.0
        return abs(ratio / target - 1) + abs(target / ratio - 1)

    return min(choices, key=distance)
