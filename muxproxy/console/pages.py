"""What every console page shares: who is signed in, rendering with the security
headers, reading a form with its CSRF token checked, and errors as pages."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from muxproxy.app_state import AppState
from muxproxy.console import Console
from muxproxy.console.session import Role, Session, Sessions
from muxproxy.errors import Forbidden, InternalError, InvalidRequest, MuxError
from muxproxy.forms import FormLimits, Part, parse_form
from muxproxy.http import media_type, read_body
from muxproxy.logs import get_logger
from muxproxy.store import ApiKey

log = get_logger("muxproxy.console")
FORM_BYTES = 64 * 1024


class SignInNeeded(Exception):
    """No session, or one that no longer holds (``reason``: why it ended)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Viewer:
    session: Session
    key: ApiKey | None  # the team's key; None for the operator

    @property
    def operator(self) -> bool:
        return self.session.role is Role.OPERATOR


@dataclass(frozen=True)
class Form:
    fields: Mapping[str, str]
    files: tuple[Part, ...] = ()

    def get(self, name: str) -> str:
        return self.fields.get(name, "").strip()


@dataclass
class Ctx:
    request: Request
    state: AppState
    console: Console
    viewer: Viewer | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    def url(self, path: str = "", **query: Any) -> str:
        url = self.console.path + path
        query = {k: v for k, v in query.items() if v not in (None, "")}
        return f"{url}?{urlencode(query)}" if query else url

    def render(self, template: str, *, status: int = 200, **values: Any) -> Response:
        session = self.viewer.session if self.viewer is not None else None
        body = self.console.templates.get_template(template).render(
            P=self.console.path, viewer=self.viewer, csrf=session.csrf if session else "",
            **values)
        return HTMLResponse(body, status_code=status)

    def redirect(self, path: str, **query: Any) -> Response:
        return RedirectResponse(self.url(path, **query), status_code=303)

    async def form(self, limits: FormLimits | None = None) -> Form:
        """The posted form, once its CSRF token matched the session's."""
        kind = media_type(self.request)
        if kind == "multipart/form-data" and limits is not None:
            raw = await read_body(self.request, self.state.settings.limits.max_body_bytes)
            parsed = await parse_form(raw, self.request.headers["content-type"], limits)
            form = Form(dict(parsed.fields), tuple(parsed.files))
        elif kind == "application/x-www-form-urlencoded":
            raw = await read_body(self.request, FORM_BYTES)
            try:
                pairs = parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                raise InvalidRequest("the form is not UTF-8") from None
            form = Form(dict(pairs))
        else:
            raise InvalidRequest("send this form from the console page")
        session = self.viewer.session if self.viewer is not None else \
            self.console.sessions.read(self.request)
        if not Sessions.csrf_ok(session, form.fields.get("csrf")):
            raise Forbidden("this form has expired or did not come from this console "
                            "(CSRF check failed): reload the page and send it again")
        return form


async def viewer_of(ctx: Ctx) -> Viewer:
    session = ctx.console.sessions.read(ctx.request)
    if session is None or session.role is Role.ANONYMOUS:
        raise SignInNeeded()
    if session.role is Role.OPERATOR:
        token = ctx.state.settings.admin.token
        if not token or session.token_mark is None or not hmac.compare_digest(
                session.token_mark, ctx.console.sessions.token_mark(token)):
            raise SignInNeeded("token")
        return Viewer(session, None)
    key = await ctx.state.store.get_key(session.key_id) if session.key_id else None
    if key is None or key.revoked_at is not None:
        raise SignInNeeded("revoked")
    return Viewer(session, key)


Handler = Callable[[Ctx], Awaitable[Response]]


def page(*, operator: bool = False, signed_in: bool = True
         ) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A console endpoint: the viewer checked (the operator's only, with
    ``operator``), failures rendered as pages, and the security headers set."""

    def decorate(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            ctx = Ctx(request, request.app.state.mux, request.app.state.console)
            try:
                if signed_in:
                    ctx.viewer = await viewer_of(ctx)
                    if operator and not ctx.viewer.operator:
                        raise Forbidden("this page is for the operator (sign in with the "
                                        "admin token)")
                response = await handler(ctx)
            except SignInNeeded as exc:
                response = ctx.redirect("/signin", ended=exc.reason)
                if exc.reason:
                    ctx.console.sessions.clear(response)
            except MuxError as exc:
                response = error_page(ctx, exc)
            except Exception:
                log.exception("unhandled error", path=request.url.path)
                response = error_page(ctx, InternalError("internal server error"))
            return secured(response, ctx.state.settings.server.public_url)

        return endpoint

    return decorate


def error_page(ctx: Ctx, exc: MuxError) -> Response:
    response = ctx.render("error.html", status=exc.status, error=exc)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return response


def secured(response: Response, public_url: str | None = None) -> Response:
    """No inline script or style, nothing from elsewhere (result images come from
    the public URL), no framing, no caching of pages that show keys' data."""
    images = "'self'"
    if public_url is not None:
        parts = urlsplit(public_url)
        images += f" {parts.scheme}://{parts.netloc}"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response
