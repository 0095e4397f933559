"""Small pieces the JSON adapters share: reference images as URLs, odd bodies."""

from __future__ import annotations

import base64
from typing import Any

from muxproxy.providers.base import Provider, Reference, UpstreamError


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


async def reference_url(provider: Provider, ref: Reference) -> str:
    """A URL the upstream can fetch: the client's own URL, else the bytes as a ``data:`` URI."""
    if ref.url is not None:
        return ref.url
    data, content_type = await provider.reference_bytes(ref)
    return data_uri(data, content_type)


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def unexpected(provider: Provider, what: str) -> UpstreamError:
    """A 2xx answer we cannot read. Transient: the next poll or retry may read fine."""
    return UpstreamError(f"{provider.name}: unexpected upstream response: {what}",
                         transient=True, code="bad_upstream_response")
