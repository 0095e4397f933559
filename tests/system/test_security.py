"""Security: keys on every surface, isolation between keys, the admin API, signed
image links, the storage folder, and how secrets are compared."""

from __future__ import annotations

import base64
import hmac
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from itsdangerous import URLSafeTimedSerializer

from muxproxy.auth import hash_key
from muxproxy.clock import ManualClock
from muxproxy.signing import UrlSigner
from muxproxy.store.sqlite import SqliteStore
from muxproxy.surfaces.registry import SURFACES, Access
from tests.support.console import console_client
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, merge, run_gateway
from tests.support.images import png_bytes
from tests.support.webhooks import LOOPBACK, Receiver

ADMIN_TOKEN = "security-admin-token-0123456789"
KEY_C = "test-key-charlie-0003"
SECRET_TEXT = b"TOP SECRET: outside the storage folder"

# Every authenticated route, with a body that would be valid or nearly so: the
# key is checked before anything else is looked at.
JOB = "no-such-task"
PROTECTED: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/v1/images/generations", {"json": {"model": "demo-image", "prompt": "x"}}),
    ("GET", f"/api/v1/images/generations?task_id={JOB}", {}),
    ("POST", f"/api/v1/images/generations/cancel?task_id={JOB}", {}),
    ("GET", "/api/v1/images/generations/list", {}),
    ("POST", "/v1/images/generations", {"json": {"model": "demo-image", "prompt": "x"}}),
    ("POST", "/v1/images/edits", {"data": "form"}),
    ("GET", "/v1/models", {}),
    ("GET", "/v1/models/demo-image", {}),
    ("POST", "/api/v1/generations", {"json": {"model": "demo-image", "prompt": "x"}}),
    ("GET", f"/api/v1/generations/{JOB}", {}),
    ("GET", f"/api/v1/generations/{JOB}/image", {}),
    ("POST", f"/api/v1/generations/{JOB}/cancel", {}),
    ("GET", "/api/v1/generations", {}),
    ("GET", f"/api/v1/webhooks/deliveries?task_id={JOB}", {}),
    ("POST", "/api/v1/webhooks/redeliver", {"json": {"task_id": JOB}}),
    ("POST", "/api/v1/webhooks/secret", {}),
    ("GET", "/api/v1/webhooks/secret", {}),
    ("DELETE", "/api/v1/webhooks/secret", {}),
    ("POST", "/mcp", {"json": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}}),
]
ADMIN_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/admin/keys", {"json": {"name": "mallory", "credits": 10**9}}),
    ("GET", "/admin/keys", {}),
    ("GET", "/admin/keys/alpha", {}),
    ("PATCH", "/admin/keys/alpha", {"json": {"unlimited": True}}),
    ("POST", "/admin/keys/alpha/topup", {"json": {"amount": 10**9}}),
    ("POST", "/admin/keys/alpha/deduct", {"json": {"amount": 10**9}}),
    ("POST", "/admin/keys/alpha/revoke", {}),
    ("GET", "/admin/keys/alpha/ledger", {}),
    ("GET", "/admin/keys/alpha/usage", {}),
]

# The console's routes (docs/console.md): who may use each once signed in. Without a
# session every one but the sign-in form and the static files sends the browser to
# sign in; every POST checks the session's CSRF token.
CONSOLE_OPEN = [("GET", "/console/signin"), ("POST", "/console/signin"),
                ("GET", "/console/static/console.css")]
CONSOLE_ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/console", "any"),
    ("POST", "/console/signout", "any"),
    ("GET", "/console/overview", "any"),
    ("GET", "/console/keys", "operator"),
    ("POST", "/console/keys", "operator"),
    ("GET", "/console/keys/alpha", "operator"),
    ("POST", "/console/keys/alpha/credits", "operator"),
    ("POST", "/console/keys/alpha/limits", "operator"),
    ("POST", "/console/keys/alpha/revoke", "operator"),
    ("GET", "/console/jobs", "any"),
    ("GET", f"/console/jobs/{JOB}", "any"),
    ("GET", f"/console/jobs/{JOB}/status", "any"),
    ("POST", f"/console/jobs/{JOB}/redeliver", "any"),
    ("POST", f"/console/jobs/{JOB}/cancel", "any"),
    ("GET", "/console/providers", "operator"),
    ("GET", "/console/playground", "any"),
    ("POST", "/console/playground", "any"),
]


def shape_ok(path: str, body: Any) -> bool:
    """The 401 comes in the surface's own error shape."""
    if path.startswith("/v1/"):
        return bool(body["error"]["type"] == "authentication_error")
    if path.startswith("/mcp"):  # a JSON-RPC error
        return bool(body["error"]["data"]["type"] == "invalid_api_key" and body["id"] is None)
    if path.startswith(("/api/v1/generations", "/admin/")):
        return isinstance(body["error"], str) and isinstance(body["code"], str)
    return bool(body["code"] == 401 and body["data"] is None)


@pytest.fixture
def secure(config: dict[str, Any]) -> dict[str, Any]:
    keys = [*config["keys"], {"name": "charlie", "key": KEY_C, "unlimited": True}]
    return merge(config, {**LOOPBACK, "admin": {"token": ADMIN_TOKEN}, "keys": keys})


async def call(gateway: RunningGateway, method: str, path: str, options: dict[str, Any],
               headers: dict[str, str]) -> tuple[int, Any]:
    kwargs = dict(options)
    if kwargs.get("data") == "form":
        form = FormData()
        form.add_field("prompt", "x")
        form.add_field("image", png_bytes(), filename="a.png", content_type="image/png")
        kwargs["data"] = form
    async with gateway.http.request(method, f"{gateway.url}{path}", headers=headers,
                                    **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


def test_the_tables_cover_every_route() -> None:
    def listed(table: list[tuple[str, str, dict[str, Any]]]) -> set[tuple[str, str]]:
        return {(m, p.split("?")[0].replace(JOB, "{id}").replace("/demo-image", "/{model:path}")
                 .replace("/alpha", "/{key}")) for m, p, _ in table}

    def served(access: Access) -> set[tuple[str, str]]:
        return {(m, r.path) for s in SURFACES if s.access is access for r in s.routes
                for m in (r.methods or set()) - {"HEAD"}}

    assert listed(PROTECTED) == served(Access.API_KEY)
    assert listed(ADMIN_ROUTES) == served(Access.ADMIN)
    console = [(m, p) for m, p in CONSOLE_OPEN] + [(m, p) for m, p, _ in CONSOLE_ROUTES]
    assert listed([(m, p.replace("console.css", "{name}"), {}) for m, p in console]) \
        == served(Access.SESSION)


NO_KEY: dict[str, dict[str, str]] = {
    "none": {},
    "wrong": {"Authorization": "Bearer sk-not-a-key-at-all"},
    "wrong-x-api-key": {"x-api-key": "sk-not-a-key-at-all"},
    "not-bearer": {"Authorization": f"Basic {KEY_A}"},
    "empty": {"Authorization": "Bearer "},
    "revoked": {"Authorization": f"Bearer {KEY_C}"},
    "revoked-x-api-key": {"x-api-key": KEY_C},
    "revoked-idempotent": {"Authorization": f"Bearer {KEY_C}", "Idempotency-Key": "retry"},
}


async def test_every_surface_answers_401_without_a_valid_key(secure: dict[str, Any]) -> None:
    async with run_gateway(secure) as gateway:
        async with gateway.http.get(f"{gateway.url}/v1/models",
                                    headers={"Authorization": f"Bearer {KEY_C}"}) as resp:
            assert resp.status == 200  # charlie's key works until it is revoked
        charlie = await gateway.state.store.key_named("charlie")
        assert charlie is not None
        async with gateway.http.post(f"{gateway.url}/admin/keys/{charlie.id}/revoke",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 200
        wrong = []
        for name, credential in NO_KEY.items():
            for method, path, options in PROTECTED:
                status, body = await call(gateway, method, path, options, credential)
                if status != 401 or not shape_ok(path, body):
                    wrong.append((name, method, path, status, body))
        assert wrong == []
        assert await gateway.state.store.list_jobs(await key_id(gateway, "charlie")) == []


async def key_id(gateway: RunningGateway, name: str) -> str:
    found = await gateway.state.store.key_named(name)
    assert found is not None
    return found.id


NOT_ADMIN: dict[str, dict[str, str]] = {
    "api-key": {"Authorization": f"Bearer {KEY_A}"},
    "api-key-x-api-key": {"x-api-key": KEY_A},
    "short-token": {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    "long-token": {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    "not-bearer": {"Authorization": f"Token {ADMIN_TOKEN}"},
    "token-as-x-api-key": {"x-api-key": ADMIN_TOKEN},
    "none": {},
}


async def test_admin_routes_refuse_anything_but_the_admin_token(secure: dict[str, Any]) -> None:
    async with run_gateway(secure) as gateway:
        wrong = []
        for name, credential in NOT_ADMIN.items():
            for method, path, options in ADMIN_ROUTES:
                status, body = await call(gateway, method, path, options, credential)
                if status != 401 or not shape_ok(path, body):
                    wrong.append((name, method, path, status, body))
        assert wrong == []
        # Nothing those requests asked for happened.
        alpha = await gateway.state.store.key_named("alpha")
        assert alpha is not None and alpha.revoked_at is None
        assert await gateway.state.store.ledger(alpha.id) == []  # no top-up
        assert await gateway.state.store.key_named("mallory") is None
        status, _ = await call(gateway, "GET", "/admin/keys", {},
                               {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status == 200


async def test_an_empty_admin_token_disables_the_admin_api(config: dict[str, Any]) -> None:
    async with run_gateway(merge(config, {"admin": {"token": ""}})) as gateway:
        for credential in ({"Authorization": "Bearer "}, {"Authorization": "Bearer"}, {}):
            status, body = await call(gateway, "GET", "/admin/keys", {}, credential)
            assert status == 401 and "disabled" in body["error"]


async def test_one_key_never_sees_another_keys_jobs(secure: dict[str, Any]) -> None:
    async with Receiver() as receiver, run_gateway(secure) as gateway:
        a = gateway.headers(KEY_A)
        native_id = await gateway.submit({"model": "demo-image", "prompt": "mine",
                                          "callback_url": receiver.url()}, KEY_A)
        async with gateway.http.post(f"{gateway.url}/v1/images/generations", headers=a,
                                     json={"model": "demo-image", "prompt": "mine"}) as resp:
            assert resp.status == 200
            openai_id = resp.headers["x-muxproxy-job-id"]
        async with gateway.http.post(f"{gateway.url}/api/v1/generations", headers=a,
                                     json={"model": "demo-image", "prompt": "mine"}) as resp:
            modelmux_id = (await resp.json())["historyId"]
        for job in (native_id, openai_id, modelmux_id):
            await gateway.wait_terminal(job, KEY_A)
        await receiver.wait_hits(1)
        async with gateway.http.post(f"{gateway.url}/api/v1/webhooks/secret",
                                     headers=a) as resp:
            assert resp.status == 200

        b = gateway.headers(KEY_B)
        # What B gets for A's jobs is exactly what it gets for jobs that do not exist.
        for job in (native_id, openai_id, modelmux_id):
            for method, path, options in PROTECTED:
                if JOB not in path and JOB not in str(options):
                    continue
                mine = await call(gateway, method, path.replace(JOB, job),
                                  _swap(options, job), b)
                none = await call(gateway, method, path, options, b)
                assert mine == none and mine[0] == 404, (method, path, mine)
        # A's result links are capabilities: only whoever holds one can fetch it.
        task = await gateway.task(native_id, KEY_A)
        assert task["resultUrls"]
        # B's idempotency keys are its own: the same key and body create B's own job.
        body = {"model": "demo-image", "prompt": "same"}
        ids = []
        for key in (KEY_A, KEY_B):
            async with gateway.http.post(f"{gateway.url}/api/v1/images/generations", json=body,
                                         headers={**gateway.headers(key),
                                                  "Idempotency-Key": "shared-key"}) as resp:
                assert resp.status == 200 and "Idempotent-Replayed" not in resp.headers
                ids.append((await resp.json())["data"]["taskId"])
        assert ids[0] != ids[1]
        # While A's own retry replays A's first answer.
        async with gateway.http.post(f"{gateway.url}/api/v1/images/generations", json=body,
                                     headers={**a, "Idempotency-Key": "shared-key"}) as resp:
            assert resp.headers.get("Idempotent-Replayed") == "true"
            assert (await resp.json())["data"]["taskId"] == ids[0]
        status, shown = await call(gateway, "GET", "/api/v1/webhooks/secret", {}, b)
        assert status == 200 and shown["data"]["enabled"] is False
        # Nothing B did reached A's receiver or A's jobs.
        assert len(receiver.hits) == 1
        a_jobs = await gateway.state.store.list_jobs(await key_id(gateway, "alpha"))
        b_jobs = await gateway.state.store.list_jobs(await key_id(gateway, "bravo"))
        assert {j.id for j in a_jobs} == {native_id, openai_id, modelmux_id, ids[0]}
        assert {j.id for j in b_jobs} == {ids[1]}


def _swap(options: dict[str, Any], job: str) -> dict[str, Any]:
    if "json" in options and options["json"].get("task_id") == JOB:
        return {"json": {"task_id": job}}
    return options


def _token(url: str) -> str:
    return url.split("/files/", 1)[1].split("/", 1)[0]


async def test_signed_links_cannot_be_forged_repointed_or_extended(
        config: dict[str, Any]) -> None:
    clock = ManualClock()
    ttl = int(config.get("storage", {}).get("url_ttl_seconds", 3600))
    async with run_gateway(config, clock=clock) as gateway:
        first = await gateway.wait_terminal(await gateway.submit(
            {"model": "demo-image", "prompt": "one"}))
        second = await gateway.wait_terminal(await gateway.submit(
            {"model": "demo-image", "prompt": "two"}))
        link = first["resultUrls"][0]
        token = _token(link)
        base = link.split("/files/")[0] + "/files"

        async def status(url: str) -> int:
            async with gateway.http.get(url) as resp:
                await resp.read()
                return resp.status

        assert await status(link) == 200
        payload, stamp, signature = token.split(".")
        other_payload = _token(second["resultUrls"][0]).split(".")[0]
        forged = {
            "random": "eyJrIjoxfQ.ZmFrZQ.c2lnbmF0dXJl",
            "other-secret": _token(UrlSigner("another-secret-0123456789", base, ttl, clock)
                                   .url("results/x/0.png")),
            "repointed": f"{other_payload}.{stamp}.{signature}",
            "extended": f"{payload}.{_later(stamp, 86400)}.{signature}",
            "resigned-stamp": f"{payload}.{_later(stamp, 86400)}.{signature[:-2]}AA",
            "truncated": f"{payload}.{stamp}",
        }
        for name, bad in forged.items():
            assert await status(f"{base}/{bad}/0.png") == 403, name
        # The name after the token is cosmetic: the signed key alone is served.
        assert await status(f"{base}/{token}/anything.png") == 200
        clock.advance(ttl + 1)
        async with gateway.http.get(link) as resp:
            assert resp.status == 403 and "expired" in (await resp.json())["msg"]
        # Polling again signs a fresh link.
        fresh = (await gateway.task(first["taskId"]))["resultUrls"][0]
        assert fresh != link and await status(fresh) == 200


def _later(stamp: str, seconds: int) -> str:
    """An itsdangerous timestamp moved ``seconds`` later."""
    padded = stamp + "=" * (-len(stamp) % 4)
    value = int.from_bytes(base64.urlsafe_b64decode(padded), "big") + seconds
    return base64.urlsafe_b64encode(value.to_bytes(4, "big")).decode().rstrip("=")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n" + SECRET_TEXT)
    (tmp_path / "secret.txt").write_bytes(SECRET_TEXT)
    return folder


async def test_the_storage_route_cannot_leave_its_folder(config: dict[str, Any],
                                                         tmp_path: Path,
                                                         outside: Path) -> None:
    images = tmp_path / "images"
    (images / "results" / "evil").mkdir(parents=True)
    os.symlink(outside / "secret.png", images / "results" / "evil" / "0.png")
    os.symlink(outside, images / "results" / "linkdir")
    async with run_gateway(config) as gateway:
        signer = gateway.state.signer  # as if the secret leaked, or a key came from a bug
        base = f"{gateway.url}/files"
        urls = [signer.url(key) for key in (
            "../secret.txt", "results/../../secret.txt", "/etc/passwd", "results/%2e%2e/x",
            "results/..%2Fsecret.txt", "results\\..\\..\\secret.txt", "results/evil/0.png",
            "results/linkdir/secret.png", "results/./evil/0.png", "")]
        urls += [f"{base}/..%2F..%2Fsecret.txt/x", f"{base}/%2e%2e/%2e%2e/secret.txt",
                 f"{base}/%2e%2e%2f%2e%2e%2fsecret.txt/x", f"{base}/../../secret.txt",
                 f"{gateway.url}/files/..%252F..%252Fsecret.txt/x"]
        for url in urls:
            async with gateway.http.get(url) as resp:
                body = await resp.read()
                assert resp.status in (403, 404), (url, resp.status)
                assert SECRET_TEXT not in body, url
        # A link the gateway made itself still works next to those.
        task = await gateway.wait_terminal(await gateway.submit(
            {"model": "demo-image", "prompt": "fine"}))
        async with gateway.http.get(task["resultUrls"][0]) as resp:
            assert resp.status == 200


async def test_keys_are_looked_up_by_digest_never_compared(
        gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """An API key is never compared: its SHA-256 digest is the lookup key, so timing
    can at most reveal digest prefixes, which do not help to find a key."""
    looked_up: list[str] = []
    lookup = SqliteStore.key_by_hash

    async def spy(self: SqliteStore, key_hash: str) -> Any:
        looked_up.append(key_hash)
        return await lookup(self, key_hash)

    monkeypatch.setattr(SqliteStore, "key_by_hash", spy)
    async with gateway.http.get(f"{gateway.url}/v1/models",
                                headers=gateway.headers(KEY_A)) as resp:
        assert resp.status == 200
    assert looked_up == [hash_key(KEY_A)]


async def test_the_admin_token_is_compared_in_constant_time(
        secure: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what surfaces/admin.py calls
    async with run_gateway(secure) as gateway:
        for token in (ADMIN_TOKEN, "wrong"):
            async with gateway.http.get(f"{gateway.url}/admin/keys",
                                        headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == (200 if token == ADMIN_TOKEN else 401)
    assert compared == [(ADMIN_TOKEN.encode(), ADMIN_TOKEN.encode()),
                        (b"wrong", ADMIN_TOKEN.encode())]


def test_link_tokens_are_itsdangerous_signed_with_the_server_secret() -> None:
    """What the forgery test relies on: a link token is payload.timestamp.signature
    over the blob key, salted for links only."""
    clock = ManualClock()
    signer = UrlSigner("server-secret-0123456789", "http://gw", 60, clock)
    token = _token(signer.url("results/j/0.png"))
    loader = URLSafeTimedSerializer("server-secret-0123456789", salt="muxproxy.files")
    assert loader.loads(token) == "results/j/0.png"
    assert len(token.split(".")) == 3


async def test_console_routes_send_anyone_without_a_session_to_sign_in(
        secure: dict[str, Any]) -> None:
    from itsdangerous import URLSafeTimedSerializer as Signer

    forged = {
        "none": None,
        "garbage": "not-a-session",
        # A well-formed session signed with another secret.
        "other-secret": Signer("another-secret-0123456789", salt="muxproxy.console.session")
        .dumps({"r": "operator", "c": "x", "k": None, "t": None}),
    }
    async with run_gateway(secure) as gateway:
        wrong = []
        for name, cookie in forged.items():
            headers = {"Cookie": f"mux_console={cookie}"} if cookie else {}
            for method, path, _ in CONSOLE_ROUTES:
                async with gateway.http.request(method, gateway.url + path, headers=headers,
                                                data={"csrf": "x", "name": "mallory"},
                                                allow_redirects=False) as resp:
                    if (resp.status, resp.headers.get("Location")) != (303, "/console/signin"):
                        wrong.append((name, method, path, resp.status))
            for method, path in CONSOLE_OPEN:
                async with gateway.http.request(method, gateway.url + path, headers=headers,
                                                data={"csrf": "x", "token": ADMIN_TOKEN},
                                                allow_redirects=False) as resp:
                    # The sign-in form and the styles; a sign-in without the form's
                    # token is refused, even with the right admin token.
                    if resp.status != (403 if method == "POST" else 200):
                        wrong.append((name, method, path, resp.status))
        assert wrong == []
        assert await gateway.state.store.key_named("mallory") is None


async def test_console_operator_pages_refuse_a_team_and_forms_need_their_csrf_token(
        secure: dict[str, Any]) -> None:
    async with run_gateway(secure) as gateway, \
            console_client(gateway.url, KEY_A) as team, \
            console_client(gateway.url, ADMIN_TOKEN) as operator:
        alpha = await key_id(gateway, "alpha")
        wrong: list[tuple[str | None, str, str, int]] = []
        for method, path, who in CONSOLE_ROUTES:
            path = path.replace("/alpha", f"/{alpha}")
            if who == "operator":
                status, _, _ = await (team.form(path, {"amount": "5", "confirm": "yes"})
                                      if method == "POST" else team.get(path))
                if status != 403:
                    wrong.append(("team", method, path, status))
            if method == "POST":
                # (A team is refused the operator's forms before their token is read.)
                for client in (team, operator) if who == "any" else (operator,):
                    for token in (None, "forged", (operator if client is team else team).csrf):
                        status, _, body = await client.form(
                            path, {"name": "mallory", "amount": "5", "confirm": "yes",
                                   "prompt": "x"}, csrf=token)
                        if status != 403 or "CSRF" not in body:
                            wrong.append((token, method, path, status))
        assert wrong == []
        key = await gateway.state.store.get_key(alpha)
        assert key is not None and key.revoked_at is None
        assert await gateway.state.store.ledger(alpha) == []
        assert await gateway.state.store.key_named("mallory") is None
        assert await gateway.state.store.list_jobs(alpha) == []


async def test_console_team_sees_another_keys_job_as_none(secure: dict[str, Any]) -> None:
    async with Receiver() as receiver, run_gateway(secure) as gateway, \
            console_client(gateway.url, KEY_B) as team:
        theirs = await gateway.submit({"model": "demo-image", "prompt": "secret plan",
                                       "callback_url": receiver.url()}, KEY_A)
        await gateway.wait_terminal(theirs, KEY_A)
        await receiver.wait_hits(1)
        for suffix in ("", "/status"):
            mine = await team.get(f"/console/jobs/{theirs}{suffix}")
            none = await team.get(f"/console/jobs/{JOB}{suffix}")
            assert mine[0] == none[0] == 404
            assert theirs not in mine[2] and "secret plan" not in mine[2]
        for action in ("redeliver", "cancel"):
            status, _, body = await team.form(f"/console/jobs/{theirs}/{action}")
            assert status == 404 and theirs not in body, action
        alpha = await key_id(gateway, "alpha")
        for query in ("", f"?key={alpha}", "?state=completed&model=demo-image&since=1h"):
            status, _, body = await team.get(f"/console/jobs{query}")
            assert status == 200 and theirs not in body and "secret plan" not in body
        assert len(receiver.hits) == 1  # no redelivery happened
