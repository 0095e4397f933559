"""deploy/compose.yaml cannot run here (no Docker engine): it is checked for what can
be checked without one. It is well-formed YAML with PostgreSQL, two gateway replicas
and a reverse proxy; every file it mounts exists; and the replicas' config, with the
environment compose gives them, loads with the real settings loader onto PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from muxproxy.settings import load_settings
from muxproxy.store import store_backend

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Values for the variables compose.yaml asks of the operator.
OPERATOR = {"POSTGRES_PASSWORD": "pg-pass-0001", "MUXPROXY_SECRET": "a-long-random-secret-0001",
            "MUXPROXY_ADMIN_TOKEN": "admin-0001"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def interpolated(value: str) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?message} with OPERATOR's values."""
    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if name in OPERATOR:
            return OPERATOR[name]
        assert op != ":?", f"compose.yaml requires {name}"
        return rest if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def test_the_stack_has_postgres_two_replicas_and_a_proxy() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    gateways = [s for s in services.values() if "muxproxy" in " ".join(s.get("command", []))]
    assert len(gateways) == 2
    proxy = services["proxy"]
    assert set(proxy["depends_on"]) == {"gateway-1", "gateway-2"}
    assert any(port.endswith(":8080") for port in proxy["ports"])
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    assert "gateway-1:8080" in caddyfile and "gateway-2:8080" in caddyfile
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), volume
            else:
                assert source in compose()["volumes"], volume
    assert (DEPLOY.parent / gateways[0]["build"]["dockerfile"]).is_file()
    assert ".[postgres,s3]" in (DEPLOY / "Dockerfile").read_text()


def test_the_replicas_config_loads_onto_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = compose()["services"]["gateway-1"]
    for name, value in gateway["environment"].items():
        monkeypatch.setenv(name, interpolated(value))
    mounted = next(v for v in gateway["volumes"] if v.startswith("./gateway.toml:"))
    assert gateway["command"][-1] == mounted.split(":")[1]
    settings = load_settings(DEPLOY / "gateway.toml")
    assert settings.database.url == "postgresql://muxproxy:pg-pass-0001@postgres:5432/muxproxy"
    assert store_backend(settings.database.url).shared
    # In a container: every interface, the proxy reaches it over the compose network.
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8080  # noqa: S104
    assert settings.server.secret == OPERATOR["MUXPROXY_SECRET"]
    assert settings.storage.url == "file:///data/images"
    assert settings.models and settings.providers
