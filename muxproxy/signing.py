"""Signed, expiring image URLs (itsdangerous).

A URL names a blob key and the time it was signed; the signature covers both, so
a link can be neither pointed at another file nor extended.
"""

from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

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
        self.base = public_url.rstrip("/")
        self.ttl = ttl_seconds

    def url(self, key: str) -> str:
        token = self._serializer.dumps(key)
        name = key.rsplit("/", 1)[-1]
        return f"{self.base}/files/{token}/{name}"

    def verify(self, token: str) -> str:
        try:
            key = self._serializer.loads(token, max_age=self.ttl)
        except SignatureExpired:
            raise LinkExpired from None
        except BadSignature:
            raise LinkInvalid from None
        if not isinstance(key, str):
            raise LinkInvalid
        return key
