"""CORS for browser clients, as plain ASGI middleware: on when ``server.cors_origins``
lists origins (``*``: any), and only on the client surfaces (those an API key
opens, and the signed file links), never on admin or ops paths.

Starlette's ``CORSMiddleware`` does the protocol (preflight answers, the
``Access-Control-*`` headers); this decides where it applies. Credentials are
never allowed: browsers send the key in ``Authorization``, not in cookies.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

# Headers a browser script may read from an answer: the job id, when to retry, the
# request id to quote, and whether an SDK may retry (openai-node reads it).
EXPOSED = ("x-muxproxy-job-id", "Retry-After", "x-request-id", "x-should-retry",
           "Idempotent-Replayed")
METHODS = ("GET", "HEAD", "POST", "DELETE")
# What a browser may send: the key (either header), the body's type, the retry key.
HEADERS = ("Authorization", "x-api-key", "Content-Type", "Idempotency-Key", "x-request-id")


class Cors:
    """``prefixes``: the client surfaces' (``registry.client_prefixes``)."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...],
                 prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes
        self.cors = CORSMiddleware(
            app, allow_origins=list(origins), allow_methods=list(METHODS),
            allow_headers=list(HEADERS), expose_headers=list(EXPOSED), max_age=600)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
