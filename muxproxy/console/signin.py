"""Signing in and out: the admin token makes an operator's session, an API key a
team's. The token travels in a POSTed form only, never in a URL."""

from __future__ import annotations

import hmac

from starlette.responses import HTMLResponse, Response

from muxproxy.clock import now_ms
from muxproxy.console.pages import Ctx, SignInNeeded, page, viewer_of

ENDED = {
    "revoked": "Your session ended: its API key was revoked.",
    "token": "Your session ended: the admin token changed.",
    "out": "You signed out.",
}


@page(signed_in=False)
async def signin_form(ctx: Ctx) -> Response:
    try:
        await viewer_of(ctx)
        return ctx.redirect("/overview")
    except SignInNeeded:
        pass
    return _form(ctx, ENDED.get(ctx.request.query_params.get("ended", ""), ""), "")


def _form(ctx: Ctx, notice: str, error: str, status: int = 200) -> Response:
    # Each form gets its own anonymous session, so its CSRF token is fresh.
    session = ctx.console.sessions.anonymous()
    response = ctx.console.templates.get_template("signin.html").render(
        P=ctx.console.path, viewer=None, csrf=session.csrf, notice=notice, error=error,
        operator_enabled=bool(ctx.state.settings.admin.token))
    answer = HTMLResponse(response, status_code=status)
    ctx.console.sessions.store(answer, session)
    return answer


@page(signed_in=False)
async def signin(ctx: Ctx) -> Response:
    form = await ctx.form()
    presented = form.get("token")
    sessions, failures = ctx.console.sessions, ctx.console.failed_signins
    address = ctx.request.client.host if ctx.request.client else ""
    now = now_ms(ctx.state.clock)
    wait = failures.wait(address, now)
    if wait is not None:
        answer = _form(ctx, "", f"Too many failed sign-ins from your address: try again "
                                f"in {wait} s.", status=429)
        answer.headers["Retry-After"] = str(wait)
        return answer
    admin_token = ctx.state.settings.admin.token
    if admin_token and hmac.compare_digest(presented.encode(), admin_token.encode()):
        session = sessions.operator(admin_token)
    else:
        key = await ctx.state.auth.lookup(presented) if presented else None
        if key is None or key.revoked_at is not None:
            failures.failed(address, now)
            return _form(ctx, "", "That is neither the admin token nor a valid API key.",
                         status=401)
        session = sessions.team(key.id)
    response = ctx.redirect("/overview")
    sessions.store(response, session)
    return response


@page()
async def signout(ctx: Ctx) -> Response:
    await ctx.form()
    response = ctx.redirect("/signin", ended="out")
    ctx.console.sessions.clear(response)
    return response

