"""Reference images named by URL, fetched by the gateway before any upstream call.

The URLs come from clients, so each fetch could reach the gateway's own network
(SSRF). Downloads run on a session of their own whose connector resolves names
through :class:`GuardedResolver` and opens every socket through
:func:`guarded_socket_factory` (the callback relay's guard, with the policy of
``limits.reference_allow_networks``): the address actually dialled is the one
checked, so a name rebound after submit fails too. Redirects are followed by hand,
each hop checked again, at most ``MAX_REDIRECTS`` of them, http(s) only.

Each body is cut off once it passes ``limits.max_image_bytes``, and a job's
downloads together stop at ``limits.max_reference_total_bytes``. Every refusal is
the client's fault (:class:`BadReference`); its message names the reference, never
an address, a port or what the server answered beyond its status.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from yarl import URL

from muxproxy import __version__, images
from muxproxy.errors import InvalidRequest
from muxproxy.faults import BadReference
from muxproxy.settings import LimitSettings
from muxproxy.webhooks.ssrf import (
    AddressPolicy,
    GuardedResolver,
    RefusedAddress,
    addresses_of,
    guarded_socket_factory,
    host_address,
)

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
USER_AGENT = f"muxproxy-references/{__version__}"


class Budget:
    """Bytes a job's downloads may still take together."""

    def __init__(self, total: int) -> None:
        self.left = total


class ReferenceFetcher:
    """Checks reference URLs at submit and downloads them for the runner."""

    def __init__(self, limits: LimitSettings, resolver: AbstractResolver | None = None
                 ) -> None:
        self.limits = limits
        self.policy = AddressPolicy(limits.reference_allow_networks)
        self._owns_resolver = resolver is None
        self._resolver = resolver or DefaultResolver()
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._resolver, self.policy),
            socket_factory=guarded_socket_factory(self.policy), limit=64)
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})

    def budget(self) -> Budget:
        return Budget(self.limits.max_reference_total_bytes)

    async def check(self, url: str, label: str, param: str) -> None:
        """Refuse (400) a URL whose host is, or now resolves to, a refused address.
        A name that does not resolve now passes: the fetch decides, and fails the job."""
        try:
            addresses = await addresses_of(urlsplit(url).hostname or "", self._resolver)
        except ValueError:
            raise InvalidRequest(f"{label} has an invalid host", param=param) from None
        if addresses is None:
            return
        if any(self.policy.refusal(a) is not None for a in addresses):
            raise InvalidRequest(f"{label} must reach a public address", param=param)

    async def fetch(self, url: str, label: str, budget: Budget) -> tuple[bytes, str]:
        """The image's bytes and type; :class:`BadReference` for every failure."""
        timeout = self.limits.reference_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                data = await self._follow(url, label, budget)
        except TimeoutError:
            raise BadReference(f"{label} could not be fetched within {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            if _refused(exc):
                raise BadReference(f"{label} must reach a public address") from None
            raise BadReference(f"{label} could not be fetched: the connection failed"
                               ) from None
        except ValueError:  # a Location or host that yarl cannot read (IDNA included)
            raise BadReference(f"{label} leads to an invalid URL") from None
        content_type = images.sniff(data)
        if content_type is None:
            raise BadReference(f"{label} is not a PNG, JPEG, WebP or GIF image")
        return data, content_type

    async def _follow(self, url: str, label: str, budget: Budget) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            self._vet(url, label)
            async with self._session.get(url, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    url = str(response.url.join(URL(location)))
                    continue
                if not 200 <= response.status < 300:
                    raise BadReference(f"{label} could not be fetched: HTTP {response.status}")
                return await self._read(response, label, budget)
        raise BadReference(f"{label} could not be fetched: more than {MAX_REDIRECTS} "
                           "redirects")

    def _vet(self, url: str, label: str) -> None:
        """Scheme and literal address of one hop, before anything is dialled."""
        try:
            parts = urlsplit(url)
            literal = host_address(parts.hostname or "")
        except ValueError:
            raise BadReference(f"{label} has an invalid host") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadReference(f"{label} leads to a URL that is not http(s)")
        if literal is not None and self.policy.refusal(literal) is not None:
            raise BadReference(f"{label} must reach a public address")

    async def _read(self, response: aiohttp.ClientResponse, label: str,
                    budget: Budget) -> bytes:
        """The body, abandoned (connection closed) as soon as it passes a limit."""
        each = self.limits.max_image_bytes
        limit = min(each, budget.left)
        buffer = bytearray()
        if (response.content_length or 0) <= limit:
            async for chunk in response.content.iter_chunked(_CHUNK):
                buffer += chunk
                if len(buffer) > limit:
                    break
            else:
                budget.left -= len(buffer)
                return bytes(buffer)
        response.close()
        if limit == each:
            raise BadReference(f"{label} is larger than {each} bytes")
        raise BadReference(f"the reference images together are larger than "
                           f"{self.limits.max_reference_total_bytes} bytes")

    async def aclose(self) -> None:
        await self._session.close()
        if self._owns_resolver:
            await self._resolver.close()


def _refused(exc: BaseException) -> bool:
    """Was a connection refused by the address guard (wrapped by aiohttp)?"""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RefusedAddress) or isinstance(
                getattr(seen, "os_error", None), RefusedAddress):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
