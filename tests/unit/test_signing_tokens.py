"""Result-URL tokens are signed without itsdangerous' per-token set-up, yet are
the tokens it makes (never compressed), and it verifies them."""

from __future__ import annotations

import pytest

from muxproxy.clock import ManualClock
from muxproxy.signing import LinkExpired, LinkInvalid, UrlSigner


@pytest.mark.parametrize("key", ["results/abc/0.png", "inputs/x/image0.webp",
                                 "results/20261121/KZ3h-q1Yw8_Lm0pRt5vA-0.png"])
def test_tokens_match_itsdangerous(key: str) -> None:
    clock = ManualClock(1_700_000_123.7)
    signer = UrlSigner("a-secret-of-enough-length", "http://gw/", 60, clock)
    assert signer.token(key) == signer._serializer.dumps(key)
    assert signer.verify(signer.token(key)) == key
    assert signer.url(key) == f"http://gw/files/{signer.token(key)}/{key.rsplit('/', 1)[-1]}"


def test_a_key_itsdangerous_would_compress_is_signed_plain_and_both_verify() -> None:
    key = "results/" + "long-" * 40 + "/1.jpeg"
    signer = UrlSigner("a-secret-of-enough-length", "http://gw/", 60, ManualClock(1e9))
    compressed = signer._serializer.dumps(key)
    assert compressed.startswith(".") and not signer.token(key).startswith(".")
    assert signer.verify(signer.token(key)) == signer.verify(compressed) == key


def test_tokens_expire_and_resist_tampering() -> None:
    clock = ManualClock(1_700_000_000.0)
    signer = UrlSigner("a-secret-of-enough-length", "http://gw", 60, clock)
    token = signer.token("results/abc/0.png")
    other = UrlSigner("another-secret-of-length", "http://gw", 60, clock)
    with pytest.raises(LinkInvalid):
        other.verify(token)
    clock.advance(61)
    with pytest.raises(LinkExpired):
        signer.verify(token)


def test_a_token_takes_the_clocks_second_as_it_moves() -> None:
    clock = ManualClock(1_700_000_123.7)
    signer = UrlSigner("a-secret-of-enough-length", "http://gw/", 60, clock)
    first = signer.token("results/a/0.png")
    clock.advance(1)
    assert signer.token("results/a/0.png") == signer._serializer.dumps("results/a/0.png")
    assert signer.token("results/a/0.png") != first
