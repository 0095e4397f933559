"""Console sessions: a signed cookie (HttpOnly, SameSite=Strict, Secure behind an
https public URL) holding who signed in and the session's CSRF token.

Neither the admin token nor an API key is ever put in the cookie: an operator's
session holds a keyed digest of the token (so a changed token ends it) and a team's
the key's id, which is looked up, and refused once revoked, on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from muxproxy.settings import Settings

COOKIE = "mux_console"


class Role(StrEnum):
    ANONYMOUS = "anonymous"  # not signed in: holds only the sign-in form's CSRF token
    OPERATOR = "operator"  # the admin token: every key, every job
    TEAM = "team"  # one API key: its own jobs and usage only


@dataclass(frozen=True)
class Session:
    role: Role
    csrf: str
    key_id: str | None = None
    token_mark: str | None = None


class Sessions:
    def __init__(self, settings: Settings) -> None:
        self._secret = settings.server.secret
        self._signer = URLSafeTimedSerializer(settings.server.secret,
                                              salt="muxproxy.console.session")
        self.max_age = int(settings.console.session_hours * 3600)
        self.secure = settings.server.public_url.startswith("https://")
        self.path = settings.console.path

    def token_mark(self, token: str) -> str:
        """A digest of the admin token, keyed with the server secret."""
        return hmac.new(self._secret.encode(), token.encode(), hashlib.sha256).hexdigest()

    def anonymous(self) -> Session:
        return Session(Role.ANONYMOUS, secrets.token_urlsafe(24))

    def operator(self, token: str) -> Session:
        # A fresh CSRF token at every sign-in: one seen before it is worth nothing.
        return Session(Role.OPERATOR, secrets.token_urlsafe(24), token_mark=self.token_mark(token))

    def team(self, key_id: str) -> Session:
        return Session(Role.TEAM, secrets.token_urlsafe(24), key_id=key_id)

    def read(self, request: Request) -> Session | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data: Any = self._signer.loads(raw, max_age=self.max_age)
            return Session(Role(data["r"]), str(data["c"]), data.get("k"), data.get("t"))
        except (BadSignature, KeyError, TypeError, ValueError):
            return None

    def store(self, response: Response, session: Session) -> None:
        data = {"r": session.role.value, "c": session.csrf, "k": session.key_id,
                "t": session.token_mark}
        response.set_cookie(COOKIE, self._signer.dumps(data), max_age=self.max_age,
                            path=self.path, secure=self.secure, httponly=True,
                            samesite="strict")

    def clear(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path=self.path, secure=self.secure, httponly=True,
                               samesite="strict")

    @staticmethod
    def csrf_ok(session: Session | None, presented: str | None) -> bool:
        return (session is not None and presented is not None
                and hmac.compare_digest(session.csrf.encode(), presented.encode()))
