"""Keep callbacks off private networks (SSRF).

A callback URL must be http(s) and reach a public address. The check that
counts happens on the address actually dialled: the relay's connector resolves
names through :class:`GuardedResolver` and creates every socket through
:func:`guarded_socket_factory`, so neither a DNS answer that changes after submit
(rebinding) nor an IP literal slips through. :meth:`CallbackGuard.check` runs the
same policy at submit, so a bad URL is a 400 there rather than a silent drop.

Private networks may be allowed for every key (``webhooks.allow_networks``) or for
one key (its ``webhook_allow_networks``): a key's grant widens the policy for its
own callbacks only, at submit and on the connection its deliveries use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import AddrInfoType, SocketFactoryType
from aiohttp.resolver import DefaultResolver

from muxproxy.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# First match names the refusal; anything else that is not globally routable is
# refused too, as "not a public address".
_REFUSED: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    ("the cloud metadata address", _nets("169.254.169.254/32", "fd00:ec2::254/128")),
    ("a loopback address", _nets("127.0.0.0/8", "::1/128")),
    ("an unspecified address", _nets("0.0.0.0/8", "::/128")),
    ("a private address", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("a carrier-grade NAT address", _nets("100.64.0.0/10")),
    ("a link-local address", _nets("169.254.0.0/16", "fe80::/10")),
    ("a unique local IPv6 address", _nets("fc00::/7", "fec0::/10")),
    ("a multicast address", _nets("224.0.0.0/4", "ff00::/8")),
    ("a reserved address", _nets("240.0.0.0/4", "192.0.0.0/24", "198.18.0.0/15",
                                 "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                 "2001:db8::/32")),
    ("a Teredo address", _nets("2001::/32")),
)
_NAT64 = _nets("64:ff9b::/96", "64:ff9b:1::/48")
RESOLVE_TIMEOUT_SECONDS = 5.0


class RefusedAddress(OSError):
    """A callback would reach an address that is not public."""


_NUMERIC = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")


def host_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally, in every form a resolver takes:
    dotted, IPv6, and the old inet_aton forms (``2130706433``, ``0177.0.0.1``,
    ``127.1``, ``0x7f.1``). None for a name; ValueError for a number that is no
    address."""
    bare = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        pass
    parts = bare.split(".")
    if not all(_NUMERIC.match(part) for part in parts):
        return None
    try:
        values = [int(p[2:] or "0", 16) if p[:2].lower() == "0x"
                  else int(p, 8) if len(p) > 1 and p[0] == "0" else int(p) for p in parts]
    except ValueError:  # 08, 09: not octal
        values = []
    *head, last = values or [-1]
    if not values or len(values) > 4 or any(v > 255 for v in head) \
            or last >= 256 ** (4 - len(head)):
        raise ValueError(f"not an address: {host}")
    return ipaddress.IPv4Address(
        sum(v << (8 * (3 - i)) for i, v in enumerate(head)) + last)


async def addresses_of(host: str, resolver: AbstractResolver) -> list[str | IPAddress] | None:
    """The addresses a URL's host reaches: itself when it is an address in any form
    (:func:`host_address`), else what ``resolver`` answers now; None when the name
    does not resolve now (the connect-time check decides then). ValueError for a
    number that is no address."""
    literal = host_address(host)
    if literal is not None:
        return [literal]
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            results = await resolver.resolve(host, 0, socket.AF_UNSPEC)
    except (OSError, TimeoutError):
        return None
    return [r["host"] for r in results]


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, compatible, 6to4, NAT64)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64) or 1 < int(ip) < 2**32:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _reason(ip: IPAddress) -> str | None:
    for reason, networks in _REFUSED:
        if any(ip in net for net in networks):
            return reason
    return None if ip.is_global else "not a public address"


class AddressPolicy:
    """Which addresses a callback may reach: public ones, plus ``allow`` networks."""

    def __init__(self, allow: Sequence[str] = ()) -> None:
        self.networks = tuple(allow)
        self.allow = tuple(ipaddress.ip_network(n, strict=False) for n in allow)

    def widened(self, extra: Sequence[str]) -> AddressPolicy:
        """This policy plus ``extra`` networks (one key's grant); itself when none."""
        if not extra:
            return self
        return AddressPolicy((*self.networks, *extra))

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` is refused, or None when it may be dialled."""
        try:
            ip = (address if not isinstance(address, str)
                  else ipaddress.ip_address(address.split("%", 1)[0]))
        except ValueError:
            return f"{address!r} is not an IP address"
        inner = _embedded_ipv4(ip)
        if any(form in net for form in (ip, inner) if form for net in self.allow):
            return None
        # An IPv6 form that carries an IPv4 address reaches that address: judge it.
        reason = _reason(inner or ip)
        if reason is None:
            return None
        return f"{ip} is {reason}" if inner is None else f"{ip} ({inner}) is {reason}"

    def check(self, address: str | IPAddress) -> None:
        reason = self.refusal(address)
        if reason is not None:
            raise RefusedAddress(f"refused: {reason}")


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and keeps only addresses the policy allows."""

    def __init__(self, inner: AbstractResolver, policy: AddressPolicy) -> None:
        self.inner = inner
        self.policy = policy

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.refusal(r["host"]) is None]
        if not allowed:
            reasons = "; ".join(sorted({str(self.policy.refusal(r["host"])) for r in results}))
            raise RefusedAddress(f"refused: {host} resolves to no public address ({reasons})")
        return allowed

    async def close(self) -> None:
        """The inner resolver belongs to whoever made it."""


def guarded_socket_factory(policy: AddressPolicy) -> SocketFactoryType:
    """A connector ``socket_factory`` that refuses before any socket is made: the
    last check, on the exact address about to be dialled (IP literals included)."""

    def make(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, address = addr_info
        policy.check(str(address[0]))
        return socket.socket(family=family, type=type_, proto=proto)

    return make


class CallbackGuard:
    """The policy plus the resolver the relay dials through, checked at submit."""

    def __init__(self, policy: AddressPolicy, resolver: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._owns_resolver = resolver is None
        self._resolver = resolver

    @property
    def resolver(self) -> AbstractResolver:
        if self._resolver is None:
            self._resolver = DefaultResolver()
        return self._resolver

    async def check(self, url: str, allow: Sequence[str] = ()) -> None:
        """Refuse (400) a callback URL whose host is, or resolves to, a refused
        address; ``allow`` adds the networks granted to the submitting key. A name
        that does not resolve now is accepted: the connect-time check decides, and a
        DNS hiccup should not fail the submit."""
        policy = self.policy.widened(allow)
        parts = urlsplit(url)
        host = parts.hostname
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            host = None
        if parts.scheme not in ("http", "https") or not host:
            raise InvalidRequest("'callback_url' must be an http(s) URL", param="callback_url")
        try:
            addresses = await addresses_of(host, self.resolver)
        except ValueError:
            raise InvalidRequest("'callback_url' has an invalid host",
                                 param="callback_url") from None
        if addresses is None:
            return
        for address in addresses:
            reason = policy.refusal(address)
            if reason is not None:
                raise InvalidRequest(f"'callback_url' must reach a public address: {reason}",
                                     param="callback_url")

    async def aclose(self) -> None:
        if self._owns_resolver and self._resolver is not None:
            await self._resolver.close()
