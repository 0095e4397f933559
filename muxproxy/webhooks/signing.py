"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed
with the bytes behind a ``whsec_<base64>`` secret. Signing is opt-in per API key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(msg_id: str, timestamp: int, body: bytes, secret: str | None) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt. ``webhook-id`` is sent on
    every callback so receivers can de-duplicate; the signature only with a secret."""
    out = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secret is not None:
        out["webhook-signature"] = signature(secret, msg_id, timestamp, body)
    return out
