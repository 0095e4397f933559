"""Settings that fail early: what a provider kind or a backend cannot work with is
refused when the config loads, by ``check-config`` and ``serve`` alike, naming the
key, before anything is opened or bound."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from muxproxy.clock import SystemClock
from muxproxy.providers import KINDS, provider_class, validate_provider
from muxproxy.settings import ProviderSettings, SettingsError, load_settings, parse_settings
from muxproxy.storage import check_storage_url
from muxproxy.store import check_store_url
from tests.support.gateway import free_socket

DB = 'url = "sqlite:///{tmp}/state/muxproxy.db"'
BASE = {
    "server": 'secret = "0123456789abcdef"',
    "database": DB,
    "storage": 'url = "file://{tmp}/state/images"',
    "providers.p": 'kind = "demo"',
}

# (what is wrong, sections replaced, what the refusal must say)
BAD = [
    ("unknown kind", {"providers.p": 'kind = "dalle"'},
     "providers.p.kind: unknown provider kind 'dalle'; known: bfl, demo"),
    ("option a kind does not know", {"providers.p": 'kind = "demo"\noptions = { delay = 1 }'},
     "providers.p.options.delay: not an option of kind 'demo'"),
    ("options on a kind that takes none",
     {"providers.p": 'kind = "openai"\noptions = { quality = "high" }'},
     "providers.p.options.quality: not an option of kind 'openai' (known: none)"),
    ("option of the wrong type", {"providers.p": 'kind = "demo"\noptions = { async = "yes" }'},
     "providers.p.options.async: expected true or false"),
    ("option out of range", {"providers.p": 'kind = "demo"\noptions = { failure_rate = 2 }'},
     "providers.p.options.failure_rate: expected a number from 0 to 1"),
    ("option value not in its list",
     {"providers.p": 'kind = "demo"\noptions = { failure_kind = "transiant" }'},
     "providers.p.options.failure_kind: expected 'permanent' or 'transient'"),
    ("replicate wait too long",
     {"providers.p": 'kind = "replicate"\noptions = { wait_seconds = 90 }'},
     "providers.p.options.wait_seconds: a whole number of seconds"),
    ("task flag of the wrong type",
     {"providers.p": 'kind = "task"\nbase_url = "https://up.example"\n'
                     'options = { base64_list = "true" }'},
     "providers.p.options.base64_list: expected true or false"),
    ("task without base_url", {"providers.p": 'kind = "task"'},
     "providers.p.base_url: required for kind 'task'"),
    ("openai-compatible without base_url", {"providers.p": 'kind = "openai-compatible"'},
     "providers.p.base_url: required for kind 'openai-compatible'"),
    ("base_url without a scheme",
     {"providers.p": 'kind = "openai"\nbase_url = "api.openai.com/v1"'},
     "providers.p.base_url: must start with http:// or https://"),
    ("database scheme", {"database": 'url = "mysql://db.example/mux"'},
     "database.url: unknown scheme 'mysql'; known: postgres, postgresql, sqlite"),
    ("postgresql URL without its database",
     {"database": 'url = "postgresql://user:pw@db.example:5432"'},
     "database.url: expected postgresql://user:password@host:5432/db"),
    ("database pool size", {"database": DB + '\npool_size = 0'},
     "database.pool_size: must be at least 1"),
    ("statement timeout", {"database": DB + '\nstatement_timeout_seconds = 0'},
     "database.statement_timeout_seconds: must be positive"),
    ("connect timeout", {"database": DB + '\nconnect_timeout_seconds = -1'},
     "database.connect_timeout_seconds: must be positive"),
    ("sqlite URL without its path", {"database": 'url = "sqlite://muxproxy.db"'},
     "database.url: expected sqlite:///relative/path.db"),
    ("storage scheme", {"storage": 'url = "gs://bucket/images"'},
     "storage.url: unknown scheme 'gs'; known: file, s3"),
    ("s3 key without its secret", {"storage": 'url = "s3://bucket/images"\n'
                                              '[storage.s3]\naccess_key_id = "AKIA1"'},
     "storage.s3: access_key_id and secret_access_key go together"),
    ("s3 unknown option", {"storage": 'url = "s3://bucket"\n[storage.s3]\nbucket = "x"'},
     "unknown setting storage.s3.bucket"),
    ("storage URL without a folder", {"storage": 'url = "file://"'},
     "storage.url: expected file://relative/folder"),
]


def write_config(tmp_path: Path, sections: dict[str, str]) -> Path:
    text = "".join(f"[{name}]\n{body.replace('{tmp}', str(tmp_path))}\n"
                   for name, body in {**BASE, **sections}.items())
    path = tmp_path / "muxproxy.toml"
    path.write_text(text)
    return path


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "muxproxy.cli", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        _, stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


@pytest.mark.parametrize(("sections", "message"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
async def test_refused_by_check_config_and_by_serve(tmp_path: Path, sections: dict[str, str],
                                                    message: str) -> None:
    config = write_config(tmp_path, sections)
    with pytest.raises(SettingsError) as refused:
        load_settings(config, env={})
    assert message in str(refused.value)
    # serve is given a port held here: had it gone as far as binding, it would
    # fail on that instead, and it would have opened the database first.
    held = free_socket()
    held.listen()
    port = str(held.getsockname()[1])
    try:
        (check_rc, check_err), (serve_rc, serve_err) = await asyncio.gather(
            run_cli("check-config", "--config", str(config)),
            run_cli("serve", "--config", str(config), "--port", port))
    finally:
        held.close()
    assert (check_rc, serve_rc) == (2, 2), (check_err, serve_err)
    assert check_err == serve_err == f"muxproxy: {refused.value}\n"
    assert not (tmp_path / "state").exists()


def test_a_good_config_still_loads(tmp_path: Path) -> None:
    sections = {
        "providers.p": 'kind = "demo"\noptions = { delay_seconds = "0.5", failure_rate = 0, '
                       'failure_kind = "transient", async = true }',
        "providers.r": 'kind = "replicate"\noptions = { wait_seconds = 60 }',
        "providers.t": 'kind = "task"\nbase_url = "http://127.0.0.1:1"\n'
                       'options = { base64_list = true }',
        "providers.o": 'kind = "openai"',
    }
    settings = load_settings(write_config(tmp_path, sections), env={})
    assert sorted(settings.providers) == ["o", "p", "r", "t"]


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_every_kind_judges_its_own_settings(kind: str) -> None:
    cls = provider_class(kind)
    assert cls.kind == kind
    validate_provider(ProviderSettings(name="up", kind=kind, base_url="https://up.example"))
    with pytest.raises(SettingsError, match=r"^providers\.up\.options\.nope: not an option"):
        validate_provider(ProviderSettings(name="up", kind=kind, base_url="https://up.example",
                                           options={"nope": 1}))
    # Without a base_url: refused at load exactly when the kind could not be built.
    bare = ProviderSettings(name="up", kind=kind)
    built = loaded = ""
    try:
        async with aiohttp.ClientSession() as http:
            await cls(bare, http, SystemClock()).aclose()
    except SettingsError as exc:
        built = str(exc)
    try:
        validate_provider(bare)
    except SettingsError as exc:
        loaded = str(exc)
    assert loaded == built
    assert built in ("", f"providers.up.base_url: required for kind {kind!r}")


@pytest.mark.parametrize(("url", "message"), [
    ("sqlite:///", "database.url: expected"),
    ("mysql://x", "database.url: unknown scheme 'mysql'"),
    ("data/muxproxy.db", "database.url: unknown scheme"),
    ("postgresql:///mux", "database.url: expected postgresql://"),
    ("postgres://host", "database.url: expected postgresql://"),
])
def test_store_urls(url: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        check_store_url(url)


def test_storage_urls() -> None:
    check_storage_url("file://data/images")
    check_storage_url("file:///var/lib/muxproxy/images")
    check_storage_url("s3://bucket")
    check_storage_url("s3://my.bucket-1/some/prefix/")
    for url in ("file:///", "file:data", "gs://bucket", "s3://", "s3://b/../x",
                "s3://bucket/a//b", "s3://Bucket_1/images"):
        with pytest.raises(SettingsError, match=r"^storage\.url: "):
            check_storage_url(url)


@pytest.mark.parametrize(("storage", "message"), [
    ({"s3": {"endpoint_url": "minio:9000"}},
     r"^storage\.s3\.endpoint_url: must start with http:// or https://"),
    ({"s3": {"secret_access_key": "x"}}, r"^storage\.s3: access_key_id and secret_access_key"),
    ({"s3": {"session_token": "x"}}, r"^storage\.s3\.session_token: needs access_key_id"),
    ({"s3": {"max_attempts": 0}}, r"^storage\.s3: max_attempts and max_connections"),
    ({"s3": {"read_timeout_seconds": 0}}, r"^storage\.s3: timeouts must be positive"),
    ({"redirect": True, "url_ttl_seconds": 700_000},
     r"^storage\.url_ttl_seconds: at most 604800"),
])
def test_s3_options(storage: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_settings({"server": {"secret": "s" * 16},
                        "storage": {"url": "s3://bucket/images", **storage}}, {})


def test_s3_credentials_from_env_references() -> None:
    settings = parse_settings({"server": {"secret": "s" * 16}, "storage": {
        "url": "s3://bucket/images", "redirect": True,
        "s3": {"endpoint_url": "https://acc.r2.cloudflarestorage.com", "region": "auto",
               "access_key_id": "${R2_KEY}", "secret_access_key": "${R2_SECRET}"}}},
        {"R2_KEY": "key-id", "R2_SECRET": "secret"})
    s3 = settings.storage.s3
    assert (s3.access_key_id, s3.secret_access_key, s3.region) == ("key-id", "secret", "auto")
    assert settings.storage.redirect and not s3.path_style


def test_only_what_a_config_names_is_imported() -> None:
    """The tables hold import strings: a backend or kind is imported when a config
    names it, and one no config names costs nothing."""
    code = """
import sys
import muxproxy.providers, muxproxy.storage, muxproxy.store
from muxproxy.settings import parse_settings
print(" ".join(sorted(sys.modules)))
parse_settings({"server": {"secret": "0123456789abcdef"},
                "providers": {"p": {"kind": "demo"}}}, {})
print(" ".join(sorted(sys.modules)))
"""
    before, after = (line.split() for line in subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        timeout=60).stdout.splitlines())
    backends = {"muxproxy.store.sqlite", "aiosqlite", "muxproxy.storage.local",
                "muxproxy.providers.demo"}
    assert backends.isdisjoint(before)
    assert backends <= set(after)
    assert {"asyncpg", "muxproxy.store.postgres", "muxproxy.storage.s3", "aiobotocore",
            "botocore"}.isdisjoint(after)
    for target in KINDS.values():
        module = target.partition(":")[0]
        assert module == "muxproxy.providers.demo" or module not in after
