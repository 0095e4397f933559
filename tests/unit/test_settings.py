"""Settings: env references, defaults, and errors that name the bad key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from muxproxy.settings import SettingsError, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]
MINIMAL: dict[str, Any] = {"server": {"secret": "0123456789abcdef"}}


def test_shipped_config_loads_without_any_environment() -> None:
    settings = load_settings(ROOT / "config.toml", env={})
    assert settings.server.port == 8080
    assert settings.database.url == "sqlite:///data/muxproxy.db"
    assert [k.name for k in settings.keys] == ["dev"]
    assert "demo-image" in settings.models
    for model in settings.models.values():
        assert all(route.provider in settings.providers for route in model.routes)


def test_env_references_and_defaults() -> None:
    raw = {"server": {"secret": "${SECRET}", "port": "${PORT:-9000}",
                      "public_url": "https://${HOST:-localhost}/gw"}}
    settings = parse_settings(raw, {"SECRET": "from-the-environment", "HOST": "img.example"})
    assert settings.server.secret == "from-the-environment"
    assert settings.server.port == 9000
    assert settings.server.public_url == "https://img.example/gw"


@pytest.mark.parametrize(("raw", "message"), [
    ({"server": {"secret": "${MISSING}"}}, "server.secret: environment variable MISSING"),
    ({**MINIMAL, "server": {"secret": "short"}}, "server.secret"),
    ({**MINIMAL, "servr": {}}, "unknown setting servr"),
    ({"server": {**MINIMAL["server"], "prot": 1}}, "unknown setting server.prot"),
    ({"server": {**MINIMAL["server"], "port": "eighty"}}, "server.port: expected int"),
    ({**MINIMAL, "jobs": {"max_attempts": 0}}, "jobs.max_attempts"),
    ({**MINIMAL, "jobs": {"sweep_seconds": 0}}, "jobs.sweep_seconds: must be above 0"),
    ({**MINIMAL, "jobs": {"sweep_seconds": 16}}, "at most half of jobs.lease_margin_seconds"),
    ({"server": {**MINIMAL["server"], "max_header_bytes": 100}}, "server.max_header_bytes"),
    ({"server": {**MINIMAL["server"], "body_timeout_seconds": 0}},
     "server.body_timeout_seconds: must be positive"),
    ({"server": {**MINIMAL["server"], "max_connections": 0}}, "server.max_connections"),
    ({**MINIMAL, "database": {"url": "mysql://x"}}, "database.url"),
    ({**MINIMAL, "providers": {"p": {"base_url": "x"}}}, "providers.p.kind: required"),
    ({**MINIMAL, "providers": {"p": {"kind": "demo", "max_concurrency": 0}}},
     "providers.p.max_concurrency"),
    ({**MINIMAL, "models": {"m": {"routes": []}}}, 'models."m".routes'),
    ({**MINIMAL, "models": {"m": {"routes": [{"provider": "ghost", "model": "x"}]}}},
     "models.\"m\".routes[0].provider: unknown provider 'ghost'"),
    ({**MINIMAL, "models": {"m": {"credits": -1, "routes": []}}}, 'models."m"'),
    ({**MINIMAL, "models": {"m": {"credits": {"1k": {"standard": 1, "high": 2}},
                                  "default_quality": "medium",
                                  "routes": [{"provider": "demo", "model": "x"}]}},
      "providers": {"demo": {"kind": "demo"}}},
     'models."m".default_quality: \'medium\' is not a tier of models."m".credits.1k'),
    ({**MINIMAL, "models": {"m": {"default_quality": "ultra",
                                  "routes": [{"provider": "demo", "model": "x"}]}},
      "providers": {"demo": {"kind": "demo"}}},
     'models."m".default_quality: expected one of'),
    ({**MINIMAL, "keys": [{"name": "k", "key": "short"}]}, "keys[0].key"),
    # [[keys]] follow the admin API's rules: no id-shaped name, bounded numbers.
    ({**MINIMAL, "keys": [{"name": "key_0123456789abcdef", "key": "x" * 10}]},
     "keys[0].name: 'name' may not begin with 'key_'"),
    ({**MINIMAL, "keys": [{"name": "k", "key": "x" * 10, "credits": 10**30}]},
     "keys[0].credits: 'credits' must be a whole number from 0 to"),
    ({**MINIMAL, "keys": [{"name": "k", "key": "x" * 10, "rpm": 10**12}]},
     "keys[0].rpm: 'rpm' must be a whole number from 1 to"),
    ({**MINIMAL, "keys": [{"name": "k", "key": "x" * 10}, {"name": "k", "key": "y" * 10}]},
     "keys: names must be unique"),
])
def test_errors_name_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings(raw, {})
    assert message in str(info.value)


def test_credits_tables(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("""
[server]
secret = "0123456789abcdef"
[providers.demo]
kind = "demo"
[models."gpt-image-2"]
resolutions = ["1K", "2k"]
routes = [{ provider = "demo", model = "x" }]
credits = { "1K" = { standard = 2, medium = 10, high = 18 }, "2k" = 5 }
""")
    model = load_settings(path, env={}).models["gpt-image-2"]
    assert model.credits == {"1k": {"standard": 2, "medium": 10, "high": 18}, "2k": 5}
    assert model.resolutions == ("1k", "2k")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "muxproxy.cli", *args], capture_output=True,
                          text=True, check=False, timeout=30)


def test_cli_check_config() -> None:
    ok = run_cli("check-config", "--config", str(ROOT / "config.toml"))
    assert ok.returncode == 0
    assert "ok" in ok.stdout


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nsecret = "0123456789abcdef"\nport = "http"\n')
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert "server.port: expected int" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_cli("serve", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "config file not found" in missing.stderr


SEED_MODELS = [
    # 000 (ModelMux)
    "nano-banana", "nano-banana-2", "nano-banana-pro", "gpt-image-2",
    # 001 (Gemini models)
    "gemini-2.5-flash-image", "gemini-3-pro-image-lite", "gemini-3-pro-image",
    "nanobanana2/gemini-3.1-flash-image-preview",
    "nanobanana-2-lite/gemini-3.1-flash-image-preview",
    "nanobanana-2-beta/gemini-3.1-flash-image-preview", "gemini-3-pro-image-gemini",
    "gemini-3.1-flash-image-gemini",
    # 002, 003, 004
    "gpt-image-2-lite", "imagen-3", "grok-image/grok-4.2-image",
    "grok-imagine/grok-imagine-image", "grok-imagine-pro/grok-imagine-image-pro",
]


def test_shipped_config_routes_every_seed_model() -> None:
    settings = load_settings(ROOT / "config.toml", env={})
    for model_id in SEED_MODELS:
        model = settings.models[model_id]
        kinds = {settings.providers[r.provider].kind for r in model.routes}
        assert kinds and "demo" not in kinds, model_id
    prices = {m: settings.models[m].credits for m in ("nano-banana", "nano-banana-2",
                                                      "nano-banana-pro")}
    assert prices == {"nano-banana": 5, "nano-banana-2": 5, "nano-banana-pro": 10}
    assert settings.models["gpt-image-2"].credits == {
        "1k": {"standard": 2, "medium": 10, "high": 18},
        "2k": {"standard": 5, "medium": 20, "high": 40},
        "4k": {"standard": 10, "medium": 32, "high": 80}}
    assert {p.kind for p in settings.providers.values()} == {
        "demo", "openai", "openai-compatible", "gemini", "xai", "fal", "replicate", "bfl",
        "task"}


def test_model_created_and_response_format(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nsecret = "0123456789abcdef"\n'
                    '[providers.demo]\nkind = "demo"\n'
                    '[models.plain]\nroutes = [{provider = "demo", model = "x"}]\n'
                    '[models.dated]\nroutes = [{provider = "demo", model = "x"}]\n'
                    'created = 2025-04-23\nresponse_format = "b64_json"\n'
                    '[models.stamped]\nroutes = [{provider = "demo", model = "x"}]\n'
                    'created = 1700000000\n')
    os.utime(path, (1_750_000_000, 1_750_000_000))
    models = load_settings(path, env={}).models
    # Without a setting: when the config file was last written.
    assert models["plain"].created == 1_750_000_000 and models["plain"].response_format == ""
    assert models["dated"].created == 1_745_366_400
    assert models["dated"].response_format == "b64_json"
    assert models["stamped"].created == 1_700_000_000


@pytest.mark.parametrize(("field", "value"), [("response_format", "png"), ("created", -1),
                                              ("created", "yesterday")])
def test_model_created_and_response_format_errors(field: str, value: Any) -> None:
    raw = {**MINIMAL, "providers": {"demo": {"kind": "demo"}},
           "models": {"m": {"routes": [{"provider": "demo", "model": "x"}], field: value}}}
    with pytest.raises(SettingsError, match=f'models."m".{field}'):
        parse_settings(raw, {})
