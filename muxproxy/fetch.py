"""Downloading the images a provider left at a URL (its results), bounded in size
and time, with failures classified like any upstream error. A URL a client names
is never fetched here: see :mod:`muxproxy.references`."""

from __future__ import annotations

import base64
import binascii

import aiohttp

from muxproxy import images
from muxproxy.providers.base import UpstreamError


async def download(http: aiohttp.ClientSession, url: str, *, max_bytes: int,
                   timeout: float) -> tuple[bytes, str]:
    """Fetch an image; returns its bytes and content type (judged by the bytes).

    ``data:`` URIs are decoded in place. A 404 or a body that is not an image is a
    permanent failure; timeouts, resets and 5xx are transient.
    """
    if url.startswith("data:"):
        data = _decode_data_uri(url)
    else:
        if not url.startswith(("http://", "https://")):
            raise UpstreamError(f"unsupported image URL scheme: {url.split(':', 1)[0]}",
                                transient=False, code="bad_image_url")
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                if response.status >= 400:
                    raise UpstreamError(f"image download failed: HTTP {response.status}",
                                        transient=response.status >= 500 or
                                        response.status == 429,
                                        code="image_download_failed", status=response.status)
                if (response.content_length or 0) > max_bytes:
                    raise UpstreamError(f"image larger than {max_bytes} bytes",
                                        transient=False, code="image_too_large")
                buffer = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    buffer += chunk
                    if len(buffer) > max_bytes:
                        raise UpstreamError(f"image larger than {max_bytes} bytes",
                                            transient=False, code="image_too_large")
                data = bytes(buffer)
        except UpstreamError:
            raise
        except TimeoutError:
            raise UpstreamError("image download timed out", transient=True,
                                code="image_download_failed") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"image download failed: {type(exc).__name__}", transient=True,
                                code="image_download_failed") from None
    content_type = images.sniff(data)
    if content_type is None:
        raise UpstreamError("downloaded file is not an image", transient=False,
                            code="not_an_image")
    return data, content_type


def _decode_data_uri(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise UpstreamError("data URI must be base64", transient=False, code="bad_image_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UpstreamError("data URI holds invalid base64", transient=False,
                            code="bad_image_url") from None
