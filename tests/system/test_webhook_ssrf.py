"""SSRF: callback URLs must reach public addresses. Every refusal here happens
before a connection: at submit (400), in the relay's resolver, or in its socket
factory. No test sends traffic beyond loopback."""

from __future__ import annotations

from typing import Any

import pytest

from muxproxy.auth import hash_key
from muxproxy.errors import InvalidRequest
from muxproxy.webhooks.sender import Sender
from muxproxy.webhooks.ssrf import AddressPolicy, CallbackGuard
from tests.support.gateway import KEY_A, merge, run_gateway
from tests.support.webhooks import LOOPBACK, Receiver, StaticResolver, wait_attempts

REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "metadata",
    "169.254.1.1": "link-local",
    "100.64.0.1": "carrier-grade NAT",
    "0.0.0.0": "unspecified",  # noqa: S104 - an address to refuse, not to bind
    "224.0.0.1": "multicast",
    "255.255.255.255": "reserved",
    "::1": "loopback",
    "::": "unspecified",
    "fd00::1": "unique local",
    "fc00::1": "unique local",
    "fe80::1": "link-local",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "metadata",
    "64:ff9b::a00:1": "private",  # NAT64 of 10.0.0.1
    "2002:a00:1::": "private",  # 6to4 of 10.0.0.1
    "::a00:1": "private",  # IPv4-compatible 10.0.0.1
    "fe80::1%eth0": "link-local",
}


@pytest.mark.parametrize(("address", "reason"), REFUSED.items())
def test_policy_refuses_non_public_addresses(address: str, reason: str) -> None:
    refusal = AddressPolicy().refusal(address)
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8"])
def test_policy_allows_public_addresses(address: str) -> None:
    assert AddressPolicy().refusal(address) is None


def test_allowed_networks_cover_their_ipv6_forms() -> None:
    policy = AddressPolicy(["127.0.0.0/8", "::1/128"])
    assert policy.refusal("127.0.0.1") is None
    assert policy.refusal("::ffff:127.0.0.1") is None
    assert policy.refusal("::1") is None
    assert policy.refusal("10.0.0.1") is not None


async def test_refused_callback_urls_are_a_400_at_submit(config: dict[str, Any]) -> None:
    resolver = StaticResolver({"internal.test": ["10.0.0.1"], "localhost": ["127.0.0.1"],
                               "meta.test": ["169.254.169.254"]})
    urls = [f"http://{a}/hook" if ":" not in a.split("%")[0] else f"http://[{a}]/hook"
            for a in REFUSED if "%" not in a]
    urls += ["http://internal.test/hook", "http://localhost:8080/hook",
             "https://meta.test/latest/meta-data", "ftp://example.com/hook",
             "file:///etc/passwd", "http:///nohost", "http://example.com:99999/",
             # Read as addresses without asking the resolver (which knows none of them).
             "http://2130706433/hook", "http://0177.0.0.1/hook", "http://127.1/hook",
             "http://0x7f.0.0.1/hook", "http://10.0x10203/hook", "http://999.1/hook"]
    async with run_gateway(config, resolver=resolver) as gateway:
        for url in urls:
            async with gateway.http.post(
                    f"{gateway.url}/api/v1/images/generations", headers=gateway.headers(),
                    json={"model": "demo-image", "prompt": "x", "callback_url": url}) as resp:
                body = await resp.json()
                assert resp.status == 400, (url, body)
            assert body["code"] == 400 and body["data"] is None, body
            assert "callback_url" in body["msg"], body
        key = await gateway.state.store.key_by_hash(hash_key(KEY_A))
        assert key is not None
        assert await gateway.state.store.list_jobs(key.id) == []


async def test_a_name_rebound_to_a_private_address_is_refused_at_connect(
        config: dict[str, Any]) -> None:
    # Public-looking (here: allowed loopback) at submit, private when the relay dials.
    resolver = StaticResolver({"rebind.test": ["127.0.0.1", "10.0.0.1"]})
    async with Receiver() as receiver, run_gateway(merge(config, LOOPBACK),
                                                   resolver=resolver) as gateway:
        task_id = await gateway.submit({"model": "demo-image", "prompt": "x",
                                        "callback_url": receiver.url(host="rebind.test")})
        delivery = await wait_attempts(gateway, task_id, 1)
        [attempt] = await gateway.state.store.list_attempts(delivery.id)
        assert attempt.status_code is None
        assert attempt.error == ("refused: rebind.test resolves to no public address "
                                 "(10.0.0.1 is a private address)")
        assert receiver.hits == []
        assert resolver.lookups == ["rebind.test", "rebind.test"]


async def test_ip_literals_are_vetted_on_the_socket_actually_dialled() -> None:
    # aiohttp skips the resolver for IP literals: the socket factory refuses them.
    async with Receiver() as receiver:
        guard = CallbackGuard(AddressPolicy(), StaticResolver({}))
        sender = Sender(guard, timeout_seconds=2, max_connections=4)
        await sender.start()
        try:
            for host in ("127.0.0.1", "[::ffff:127.0.0.1]"):
                reply = await sender.post(f"http://{host}:{receiver.port}/hook", b"{}", {})
                assert reply.status is None
                assert reply.error is not None and reply.error.startswith("refused: "), reply
                assert "loopback" in reply.error
                assert reply.result == "refused"
        finally:
            await sender.aclose()
        assert receiver.hits == []


@pytest.mark.parametrize("url", ["http://2130706433/hook", "http://0x7f000001/hook",
                                 "http://0177.0.0.1/hook", "http://127.1/hook"])
async def test_odd_spellings_of_loopback_are_caught_by_resolving(url: str) -> None:
    # Numeric host forms the system resolver parses itself (no DNS query is sent).
    guard = CallbackGuard(AddressPolicy())
    try:
        with pytest.raises(InvalidRequest, match=r"127\.0\.0\.1 is a loopback address"):
            await guard.check(url)
    finally:
        await guard.aclose()
