"""Signed, expiring image URLs (itsdangerous).

A URL names a blob key and the time it was signed; the signature covers both, so
a link can be neither pointed at another file nor extended.
"""

from __future__ import annotations

import hmac

import orjson
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes

from muxproxy.clock import Clock


class LinkExpired(Exception):
    pass


class LinkInvalid(Exception):
    pass


def _signer_on(clock: Clock) -> type[TimestampSigner]:
    class ClockSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock.now())

    return ClockSigner


class UrlSigner:
    def __init__(self, secret: str, public_url: str, ttl_seconds: int, clock: Clock) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="muxproxy.files",
                                                  signer=_signer_on(clock))
        # Signing is on every poll of a finished task. itsdangerous builds a signer and
        # derives its key for every token, and tries zlib on every payload; do the
        # first two once and skip the third (a key is too short to gain from it), and
        # sign exactly as its TimestampSigner does (HMAC-SHA1 over payload.timestamp),
        # so verify(), which reads either payload form, accepts the tokens.
        self._mac = hmac.new(self._serializer.make_signer().derive_key(), digestmod="sha1")
        self._clock = clock
        self._second = -1
        self._stamp = b""
        self.base = public_url.rstrip("/")
        self.ttl = ttl_seconds

    def token(self, key: str) -> str:
        payload = base64_encode(orjson.dumps(key))  # as dump_payload, uncompressed
        second = int(self._clock.now())
        if second != self._second:  # the timestamp's encoding changes once a second
            self._stamp = b"." + base64_encode(int_to_bytes(second))
            self._second = second
        value = payload + self._stamp
        mac = self._mac.copy()  # the key set up once, not per token as hmac.digest()
        mac.update(value)
        return (value + b"." + base64_encode(mac.digest())).decode("ascii")

    def url(self, key: str) -> str:
        name = key.rsplit("/", 1)[-1]
        return f"{self.base}/files/{self.token(key)}/{name}"

    def verify(self, token: str) -> str:
        return self.verify_timed(token)[0]

    def verify_timed(self, token: str) -> tuple[str, int]:
        """The key a token names, and the whole seconds its link has left (at least
        1): a redirect from it to a presigned URL lives no longer than it."""
        try:
            key, signed_at = self._serializer.loads(token, max_age=self.ttl,
                                                    return_timestamp=True)
        except SignatureExpired:
            raise LinkExpired from None
        except BadSignature:
            raise LinkInvalid from None
        if not isinstance(key, str):
            raise LinkInvalid
        left = int(signed_at.timestamp()) + self.ttl - int(self._clock.now())
        return key, max(1, left)
