"""The admin API and the keys CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import KEY_A, RunningGateway, merge, run_gateway

ADMIN = "admin-token-for-tests-0001"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
ROUTES = [("POST", "/admin/keys"), ("GET", "/admin/keys"), ("GET", "/admin/keys/alpha"),
          ("PATCH", "/admin/keys/alpha"), ("POST", "/admin/keys/alpha/topup"),
          ("POST", "/admin/keys/alpha/deduct"),
          ("POST", "/admin/keys/alpha/revoke"), ("GET", "/admin/keys/alpha/ledger"),
          ("GET", "/admin/keys/alpha/usage")]


@pytest.fixture
async def admin_gw(config: dict[str, Any]) -> Any:
    priced = {"admin": {"token": ADMIN},
              "models": {"priced": {"credits": 3, "routes": [{"provider": "demo",
                                                               "model": "p"}]}}}
    async with run_gateway(merge(config, priced)) as gw:
        yield gw


async def call(gw: RunningGateway, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with gw.http.request(method, gw.url + path, json=body,
                               headers=AUTH if headers is None else headers) as resp:
        return resp.status, await resp.json()


async def test_every_admin_route_needs_the_admin_token(admin_gw: RunningGateway) -> None:
    refusals = [{}, {"Authorization": f"Bearer {KEY_A}"},
                {"Authorization": "Bearer wrong-admin-token"},
                {"Authorization": ADMIN}, {"x-api-key": ADMIN}]
    for method, path in ROUTES:
        for headers in refusals:
            status, body = await call(admin_gw, method, path, {"name": "x", "amount": 1},
                                      headers)
            assert status == 401, (method, path, headers)
            assert body == {"error": "missing or wrong admin token", "code": "invalid_api_key"}
    assert [k.name for k in await admin_gw.state.store.list_keys()] == ["alpha", "bravo"]
    alpha = await admin_gw.state.store.key_named("alpha")
    assert alpha is not None
    assert alpha.revoked_at is None


async def test_admin_api_is_off_without_a_token(gateway: RunningGateway) -> None:
    status, body = await call(gateway, "GET", "/admin/keys", headers={"Authorization": "Bearer "})
    assert status == 401
    assert "disabled" in body["error"]


async def test_key_lifecycle(admin_gw: RunningGateway) -> None:
    status, created = await call(admin_gw, "POST", "/admin/keys",
                                 {"name": "team-a", "credits": 10, "rpm": 100,
                                  "models": ["priced"]})
    assert status == 201
    secret = created["secret"]
    assert secret.startswith("mux_")
    key = created["key"]
    assert (key["name"], key["balance"], key["rpm"], key["models"], key["unlimited"]) == (
        "team-a", 10, 100, ["priced"], False)
    assert "secret" not in json.dumps((await call(admin_gw, "GET", "/admin/keys"))[1])

    # The new key works at once, within its limits and balance.
    async with admin_gw.http.post(f"{admin_gw.url}/api/v1/images/generations",
                                  json={"model": "priced", "prompt": "first"},
                                  headers={"Authorization": f"Bearer {secret}"}) as resp:
        assert resp.status == 200
        task_id = (await resp.json())["data"]["taskId"]
    await admin_gw.wait_terminal(task_id, key=secret)

    status, topped = await call(admin_gw, "POST", f"/admin/keys/{key['id']}/topup",
                                {"amount": 25, "note": "december budget"})
    assert (status, topped["balance"]) == (200, 32)
    status, changed = await call(admin_gw, "PATCH", f"/admin/keys/{key['id']}",
                                 {"rpm": None, "max_concurrent": 4, "models": None})
    assert (status, changed["rpm"], changed["max_concurrent"], changed["models"]) == (
        200, None, 4, None)

    status, ledger = await call(admin_gw, "GET", f"/admin/keys/{key['id']}/ledger")
    assert status == 200
    kinds = [(e["kind"], e["amount"]) for e in ledger["entries"]]
    assert kinds == [("topup", 25), ("charge", -3), ("release", 3), ("hold", -3),
                     ("topup", 10)]
    assert ledger["ledger_sum"] == ledger["key"]["balance"] == 32
    assert ledger["entries"][0]["note"] == "december budget"

    status, usage = await call(admin_gw, "GET", f"/admin/keys/{key['id']}/usage?days=7")
    assert status == 200
    [row] = usage["usage"]
    assert (row["model"], row["jobs"], row["completed"], row["failed"], row["credits"]) == (
        "priced", 1, 1, 0, 3)

    status, revoked = await call(admin_gw, "POST", f"/admin/keys/{key['id']}/revoke")
    assert status == 200
    assert revoked["revoked_at"] is not None
    async with admin_gw.http.get(f"{admin_gw.url}/api/v1/images/generations",
                                 params={"task_id": task_id},
                                 headers={"Authorization": f"Bearer {secret}"}) as resp:
        assert resp.status == 401


@pytest.mark.parametrize(("method", "path", "body", "status", "fragment"), [
    ("POST", "/admin/keys", {"name": ""}, 400, "'name' is required"),
    ("POST", "/admin/keys", {"name": "alpha"}, 409, "exists"),
    ("POST", "/admin/keys", {"name": "n", "credits": -1}, 400, "'credits'"),
    ("POST", "/admin/keys", {"name": "n", "rpm": 0}, 400, "'rpm'"),
    ("POST", "/admin/keys", {"name": "n", "models": "priced"}, 400, "'models'"),
    ("POST", "/admin/keys", {"name": "n", "colour": 1}, 400, "unknown field"),
    ("POST", "/admin/keys/{alpha}/topup", {"amount": 0}, 400, "'amount'"),
    ("POST", "/admin/keys/{alpha}/topup", {"amount": "5"}, 400, "'amount'"),
    ("POST", "/admin/keys/ghost/topup", {"amount": 5}, 404, "no such key"),
    ("GET", "/admin/keys/ghost", None, 404, "no such key"),
    ("GET", "/admin/keys/{alpha}/usage?days=x", None, 400, "'days'"),
])
async def test_admin_errors(admin_gw: RunningGateway, method: str, path: str, body: Any,
                            status: int, fragment: str) -> None:
    alpha = await admin_gw.state.store.key_named("alpha")
    assert alpha is not None
    got, data = await call(admin_gw, method, path.format(alpha=alpha.id), body)
    assert got == status
    assert set(data) == {"error", "code"}
    assert fragment in data["error"]


def cli(config: Path, *args: str) -> tuple[int, Any, str]:
    result = subprocess.run([sys.executable, "-m", "muxproxy.cli", "keys", "--config",
                             str(config), *args], capture_output=True, text=True,
                            check=False, timeout=60, cwd=config.parent)
    out = json.loads(result.stdout) if result.returncode == 0 else None
    return result.returncode, out, result.stderr


def test_keys_cli(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[server]\nsecret = "0123456789abcdef"\n'
                      '[database]\nurl = "sqlite:///state/db.sqlite"\n'
                      '[storage]\nurl = "file://state/images"\n'
                      '[providers.demo]\nkind = "demo"\n'
                      '[models."m"]\nroutes = [{ provider = "demo", model = "m" }]\n')
    code, created, _ = cli(config, "create", "ops", "--credits", "40", "--rpm", "30",
                           "--models", "m")
    assert code == 0
    assert created["secret"].startswith("mux_")
    assert (created["key"]["balance"], created["key"]["rpm"], created["key"]["models"]) == (
        40, 30, ["m"])
    assert cli(config, "create", "ops")[0] == 1
    code, listed, _ = cli(config, "list")
    assert [k["name"] for k in listed["keys"]] == ["ops"]
    # Credits are taken back by their own command: a top-up is always positive.
    code, topped, _ = cli(config, "deduct", "ops", "15", "--note", "correction")
    assert topped["balance"] == 25
    code, ledger, _ = cli(config, "ledger", "ops")
    assert ledger["balance_from_ledger"] == 25
    assert [e["amount"] for e in ledger["entries"]] == [-15, 40]
    assert [e["kind"] for e in ledger["entries"]] == ["deduct", "topup"]
    code, usage, _ = cli(config, "usage", "ops", "--days", "3")
    assert (code, usage["usage"]) == (0, [])
    code, revoked, _ = cli(config, "revoke", created["key"]["id"])
    assert revoked["revoked_at"] is not None
    code, _, err = cli(config, "topup", "nobody", "5")
    assert code == 1
    assert "no key 'nobody'" in err


# --- one set of rules for the admin API and the CLI -----------------------------------

CLI_CONFIG = ('[server]\nsecret = "0123456789abcdef"\n'
              '[database]\nurl = "sqlite:///state/db.sqlite"\n'
              '[storage]\nurl = "file://state/images"\n'
              '[providers.demo]\nkind = "demo"\n'
              '[models."m"]\nroutes = [{ provider = "demo", model = "m" }]\n')
HUGE = str(10**30)
# (API method, path under the key, JSON body or raw text, the CLI's arguments).
BAD_INPUT: list[tuple[str, str, Any, list[str]]] = [
    ("POST", "", {"name": "key_0123456789abcdef"}, ["create", "key_0123456789abcdef"]),
    ("POST", "", {"name": "n" * 101}, ["create", "n" * 101]),
    ("POST", "", {"name": "   "}, ["create", "   "]),
    ("POST", "", '{"name": "n", "credits": 1e309}', ["create", "n", "--credits", "1e309"]),
    ("POST", "", f'{{"name": "n", "credits": {HUGE}}}', ["create", "n", "--credits", HUGE]),
    ("POST", "", {"name": "n", "credits": -1}, ["create", "n", "--credits", "-1"]),
    ("POST", "", {"name": "n", "rpm": 0}, ["create", "n", "--rpm", "0"]),
    ("POST", "", {"name": "n", "rpm": 1.5}, ["create", "n", "--rpm", "1.5"]),
    ("POST", "", {"name": "n", "max_concurrent": 10**10},
     ["create", "n", "--max-concurrent", str(10**10)]),
    ("POST", "/topup", {"amount": 0}, ["topup", "{key}", "0"]),
    ("POST", "/topup", '{"amount": 1e309}', ["topup", "{key}", "1e309"]),
    ("POST", "/topup", f'{{"amount": {HUGE}}}', ["topup", "{key}", HUGE]),
    ("POST", "/topup", {"amount": -(10**16)}, ["topup", "{key}", str(-(10**16))]),
    ("POST", "/topup", {"amount": -5}, ["topup", "{key}", "-5"]),
    ("POST", "/deduct", {"amount": 0}, ["deduct", "{key}", "0"]),
    ("POST", "/deduct", {"amount": -5}, ["deduct", "{key}", "-5"]),
    ("POST", "/deduct", f'{{"amount": {HUGE}}}', ["deduct", "{key}", HUGE]),
    ("POST", "/topup", {"amount": 5, "note": "x" * 501},
     ["topup", "{key}", "5", "--note", "x" * 501]),
    ("PATCH", "", {"rpm": 0}, ["limits", "{key}", "--rpm", "0"]),
    ("PATCH", "", {"max_concurrent": "many"}, ["limits", "{key}", "--max-concurrent", "many"]),
    ("GET", "/ledger?limit=0", None, ["ledger", "{key}", "--limit", "0"]),
    ("GET", "/usage?days=5000", None, ["usage", "{key}", "--days", "5000"]),
]


async def api_call(gw: RunningGateway, method: str, path: str, body: Any) -> tuple[int, Any]:
    if not isinstance(body, str):
        return await call(gw, method, path, body)
    async with gw.http.request(method, gw.url + path, data=body.encode(),
                               headers={**AUTH, "Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def test_api_and_cli_refuse_the_same_input_with_the_same_message(
        admin_gw: RunningGateway, tmp_path: Path) -> None:
    config = tmp_path / "cli" / "config.toml"
    config.parent.mkdir()
    config.write_text(CLI_CONFIG)
    code, created, _ = await asyncio.to_thread(cli, config, "create", "ops", "--credits", "5")
    assert code == 0
    alpha = await admin_gw.state.store.key_named("alpha")
    assert alpha is not None
    for method, tail, body, args in BAD_INPUT:
        path = "/admin/keys" if (method, tail) == ("POST", "") \
            else f"/admin/keys/{alpha.id}{tail}"
        status, answer = await api_call(admin_gw, method, path, body)
        assert status == 400, (method, tail, body, answer)
        code, _, err = await asyncio.to_thread(
            cli, config, *(a.format(key=created["key"]["id"]) for a in args))
        assert (code, err) == (2, f"muxproxy: {answer['error']}\n"), args
    # Nothing above changed a stored key.
    code, ops, _ = await asyncio.to_thread(cli, config, "show", "ops")
    assert (ops["balance"], ops["rpm"], ops["max_concurrent"]) == (5, None, None)
    assert [k.name for k in await admin_gw.state.store.list_keys()] == ["alpha", "bravo"]


async def test_keys_are_addressed_by_id_and_found_by_name_explicitly(
        admin_gw: RunningGateway, tmp_path: Path) -> None:
    alpha = await admin_gw.state.store.key_named("alpha")
    assert alpha is not None
    status, found = await call(admin_gw, "GET", "/admin/keys?name=alpha")
    assert (status, [k["id"] for k in found["keys"]]) == (200, [alpha.id])
    assert await call(admin_gw, "GET", "/admin/keys?name=ghost") == (200, {"keys": []})
    assert (await call(admin_gw, "GET", f"/admin/keys/{alpha.id}"))[1]["name"] == "alpha"
    # A name in the path is not an id: nothing is found, let alone changed.
    for method, path, body in (("GET", "", None), ("POST", "/topup", {"amount": 5}),
                               ("POST", "/revoke", None), ("PATCH", "", {"rpm": 3})):
        status, answer = await call(admin_gw, method, f"/admin/keys/alpha{path}", body)
        assert status == 404
        assert answer["error"].startswith("no such key: there is no key 'alpha'")
        assert "?name=" in answer["error"]
    after = await admin_gw.state.store.get_key(alpha.id)
    assert after == alpha
    # No name can take an id's form, so the CLI's KEY argument is never ambiguous.
    status, answer = await call(admin_gw, "POST", "/admin/keys", {"name": alpha.id})
    assert (status, answer["code"]) == (400, "invalid_request")
    assert "the form of a key id" in answer["error"]
    config = tmp_path / "cli" / "config.toml"
    config.parent.mkdir()
    config.write_text(CLI_CONFIG)
    _, created, _ = await asyncio.to_thread(cli, config, "create", "team-a")
    key_id = created["key"]["id"]
    for ref in (key_id, "team-a"):
        code, shown, _ = await asyncio.to_thread(cli, config, "show", ref)
        assert (code, shown["id"], shown["name"]) == (0, key_id, "team-a")
    code, listed, _ = await asyncio.to_thread(cli, config, "list", "--name", "team-a")
    assert (code, [k["id"] for k in listed["keys"]]) == (0, [key_id])
    code, _, err = await asyncio.to_thread(cli, config, "show", "key_0000000000000000")
    assert (code, err) == (1, "muxproxy: no such key: there is no key 'key_0000000000000000'\n")


async def test_a_legacy_key_named_like_an_id_is_untouched_by_that_id(
        admin_gw: RunningGateway) -> None:
    store = admin_gw.state.store
    alpha = await store.key_named("alpha")
    assert alpha is not None
    # Such names were accepted once; the store takes one without the name check.
    legacy = await store.create_key(alpha.id, "legacy-digest", now=0)
    status, patched = await call(admin_gw, "PATCH", f"/admin/keys/{alpha.id}", {"rpm": 3})
    assert (status, patched["name"], patched["rpm"]) == (200, "alpha", 3)
    status, revoked = await call(admin_gw, "POST", f"/admin/keys/{alpha.id}/revoke")
    assert (status, revoked["name"]) == (200, "alpha") and revoked["revoked_at"] is not None
    assert await store.get_key(legacy.id) == legacy
    status, found = await call(admin_gw, "GET", f"/admin/keys?name={alpha.id}")
    assert (status, [k["id"] for k in found["keys"]]) == (200, [legacy.id])


def test_cli_sets_and_clears_limits(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CLI_CONFIG)
    assert cli(config, "create", "ops", "--no-unlimited")[0] == 0
    code, changed, _ = cli(config, "limits", "ops", "--rpm", "30", "--max-concurrent", "2",
                           "--models", "m, x", "--unlimited")
    assert code == 0
    assert (changed["rpm"], changed["max_concurrent"], changed["models"],
            changed["unlimited"]) == (30, 2, ["m", "x"], True)
    code, cleared, _ = cli(config, "limits", "ops", "--rpm", "none", "--models", "null")
    assert (code, cleared["rpm"], cleared["models"], cleared["max_concurrent"]) == (
        0, None, None, 2)


async def test_credits_are_taken_back_only_by_deduct(admin_gw: RunningGateway) -> None:
    alpha = await admin_gw.state.store.key_named("alpha")
    assert alpha is not None
    status, answer = await call(admin_gw, "POST", f"/admin/keys/{alpha.id}/topup",
                                {"amount": -5})
    assert (status, answer["error"]) == (400, "'amount' must be a whole number from 1 to "
                                              "1000000000000000")
    status, topped = await call(admin_gw, "POST", f"/admin/keys/{alpha.id}/topup",
                                {"amount": 3})
    assert (status, topped["balance"]) == (200, 3)
    status, deducted = await call(admin_gw, "POST", f"/admin/keys/{alpha.id}/deduct",
                                  {"amount": 5, "note": "over-credited"})
    assert (status, deducted["balance"]) == (200, -2)
    _, ledger = await call(admin_gw, "GET", f"/admin/keys/{alpha.id}/ledger")
    assert [(e["kind"], e["amount"], e["note"]) for e in ledger["entries"]] == [
        ("deduct", -5, "over-credited"), ("topup", 3, None)]
    assert ledger["ledger_sum"] == ledger["key"]["balance"] == -2
