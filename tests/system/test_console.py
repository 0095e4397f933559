"""The web console over plain HTTP: its settings, its session cookie and headers,
and that no token reaches a URL or a log line. (Security tables: test_security.py;
the pages in a browser: test_console_browser.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.responses import Response

from muxproxy.clock import ManualClock
from muxproxy.console.session import COOKIE, Sessions
from muxproxy.console.throttle import PER_MINUTE, FailedSignIns
from muxproxy.settings import SettingsError, parse_settings
from tests.support.console import CSRF, console_client
from tests.support.gateway import KEY_A, base_config, merge, run_gateway

ADMIN_TOKEN = "console-admin-token-0123456789"


@pytest.fixture
def console_config(tmp_path: Path) -> dict[str, Any]:
    return merge(base_config(tmp_path), {"admin": {"token": ADMIN_TOKEN}})


def fresh_csrf(page: str) -> str:
    found = CSRF.search(page)
    assert found is not None
    return found.group(1)


def cookie_of(response: Response) -> str:
    return next(v.decode() for k, v in response.raw_headers if k == b"set-cookie")


@pytest.mark.parametrize(("public_url", "secure"), [("http://127.0.0.1:8080", False),
                                                    ("https://images.example.com", True)])
def test_the_session_cookie_is_httponly_strict_and_secure_behind_https(
        tmp_path: Path, public_url: str, secure: bool) -> None:
    config = merge(base_config(tmp_path), {"server": {"public_url": public_url}})
    sessions = Sessions(parse_settings(config, {}))
    response = Response()
    sessions.store(response, sessions.operator(ADMIN_TOKEN))
    cookie = cookie_of(response)
    assert cookie.startswith(f"{COOKIE}=")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/console"} <= flags
    assert ("secure" in flags) is secure
    # The token itself is never in the cookie, only a keyed digest of it.
    assert ADMIN_TOKEN not in cookie


@pytest.mark.parametrize("path", ["console", "/console/", "/a//b", "/api/console", "/v1",
                                  "/files", "/mcp", "/con sole", "/.."])
def test_console_path_must_be_a_free_path(tmp_path: Path, path: str) -> None:
    with pytest.raises(SettingsError, match=r"console\.path"):
        parse_settings(merge(base_config(tmp_path), {"console": {"path": path}}), {})


async def test_the_console_moves_to_its_path_or_is_off(console_config: dict[str, Any]) -> None:
    moved = merge(console_config, {"console": {"path": "/team/console"}})
    async with run_gateway(moved) as gateway:
        async with gateway.http.get(f"{gateway.url}/team/console/signin") as resp:
            assert resp.status == 200
            assert 'action="/team/console/signin"' in await resp.text()
        async with gateway.http.get(f"{gateway.url}/console/signin") as resp:
            assert resp.status == 404
    off = merge(console_config, {"console": {"enabled": False}})
    async with run_gateway(off) as gateway, \
            gateway.http.get(f"{gateway.url}/console/signin") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == 404  # the native shape: nothing is there


async def test_pages_carry_a_strict_policy_and_tokens_stay_out_of_urls_and_logs(
        console_config: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    config = merge(console_config, {"logging": {"level": "debug"}})
    async with run_gateway(config) as gateway:
        for token in (ADMIN_TOKEN, KEY_A):
            async with console_client(gateway.url, token) as client:
                async with client.http.get(f"{gateway.url}/console/overview") as resp:
                    assert resp.status == 200
                    policy = resp.headers["Content-Security-Policy"]
                    assert "script-src 'self';" in policy and "style-src 'self';" in policy
                    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
                    assert resp.headers["Cache-Control"] == "no-store"
                    page = await resp.text()
                # No inline script or style for the policy to refuse.
                assert "<script>" not in page and "style=" not in page
                assert token not in page
            # A token sent in a URL signs no one in.
            async with console_client(gateway.url, None) as anonymous:
                status, _, _ = await anonymous.get(f"/console/signin?token={token}")
                assert status == 200
                status, location, _ = await anonymous.get(f"/console/overview?token={token}")
                assert (status, location) == (303, "/console/signin")
        async with gateway.http.get(f"{gateway.url}/console/static/console.js") as resp:
            assert resp.status == 200 and "javascript" in resp.headers["Content-Type"]
    out = capsys.readouterr().out
    records = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(r.get("path", r.get("route", "")).startswith("/console/signin")
               for r in records), "the sign-ins were logged"
    for token in (ADMIN_TOKEN, KEY_A):
        assert token not in out


async def test_operator_tops_up_and_changes_limits_through_key_admin(
        console_config: dict[str, Any]) -> None:
    async with run_gateway(console_config) as gateway, \
            console_client(gateway.url, ADMIN_TOKEN) as operator:
        alpha = await gateway.state.store.key_named("alpha")
        assert alpha is not None
        base = f"/console/keys/{alpha.id}"
        assert (await operator.form(f"{base}/credits", {"amount": "40", "note": "welcome",
                                                        "direction": "topup"}))[:2] \
            == (303, f"{base}?done=credits")
        await operator.form(f"{base}/credits", {"amount": "15", "direction": "deduct"})
        assert (await operator.form(f"{base}/limits", {"rpm": "30", "max_concurrent": "2",
                                                       "models": "demo-image"}))[0] == 303
        key = await gateway.state.store.get_key(alpha.id)
        assert key is not None and key.balance == alpha.balance + 25
        assert (key.limits.unlimited, key.limits.rpm_limit, key.limits.max_concurrent,
                key.limits.allowed_models) == (False, 30, 2, ("demo-image",))
        _, _, page = await operator.get(base)
        assert "welcome" in page and "topup" in page and "deduct" in page
        # The key rules refuse what they refuse, with their message, as a page.
        status, _, page = await operator.form(f"{base}/credits", {"amount": "-5"})
        assert status == 400 and "amount" in page
        status, _, page = await operator.form(f"{base}/limits", {"rpm": "0"})
        assert status == 400 and "rpm" in page
        key = await gateway.state.store.get_key(alpha.id)
        assert key is not None and key.balance == alpha.balance + 25
        assert key.limits.rpm_limit == 30


async def test_failed_sign_ins_are_held_to_a_pace_per_address(
        console_config: dict[str, Any]) -> None:
    clock = ManualClock()
    async with run_gateway(console_config, clock=clock) as gw, \
            console_client(gw.url, None) as client:
        for _ in range(PER_MINUTE):
            status, _, body = await client.form("/console/signin", {"token": "guess"})
            assert status == 401 and "neither the admin token" in body
            client.csrf = fresh_csrf(body)  # each answered form has a token of its own
        # Past the allowance, not even the right token is checked until a refill.
        async with client.http.post(f"{gw.url}/console/signin", allow_redirects=False,
                                    data={"token": ADMIN_TOKEN, "csrf": client.csrf}) as resp:
            page = await resp.text()
            assert resp.status == 429 and "Too many failed sign-ins" in page
            wait = int(resp.headers["Retry-After"])
        client.csrf = fresh_csrf(page)
        assert 0 < wait <= 60 / PER_MINUTE
        clock.advance(wait)
        status, location, _ = await client.form("/console/signin", {"token": ADMIN_TOKEN})
        assert (status, location) == (303, "/console/overview")


def test_a_refilled_bucket_allows_one_more_try_at_a_time() -> None:
    failures, now = FailedSignIns(per_minute=2), 1_000_000
    for _ in range(2):
        assert failures.wait("10.0.0.1", now) is None
        failures.failed("10.0.0.1", now)
    assert failures.wait("10.0.0.1", now) == 30
    assert failures.wait("10.0.0.2", now) is None  # another address is not held
    now += 20_000
    assert failures.wait("10.0.0.1", now) == 10
    now += 10_000
    assert failures.wait("10.0.0.1", now) is None
    failures.failed("10.0.0.1", now)  # the refilled try, spent
    assert failures.wait("10.0.0.1", now) == 30
    now += 600_000
    failures.failed("10.0.0.1", now)  # long after: the whole allowance is back
    assert failures.wait("10.0.0.1", now) is None
