"""API keys: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``.

Keys are stored as SHA-256 digests and looked up by digest, so the secret itself
is never compared, stored or logged.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request

from muxproxy.errors import Unauthorized
from muxproxy.store import ApiKey, Store


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class Authenticator:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def authenticate(self, request: Request) -> ApiKey:
        key = presented_key(request)
        if key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer KEY' or "
                               "'x-api-key: KEY'")
        found = await self.store.key_by_hash(hash_key(key))
        if found is None or found.revoked_at is not None:
            raise Unauthorized("invalid API key")
        return found
