"""Reading the settings tree: TOML, ``${ENV}`` references, types, then every check.

:func:`muxproxy.settings.load_settings` and :func:`~muxproxy.settings.parse_settings`
are the public names; they call :func:`load` and :func:`parse` here.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from muxproxy import keys as key_rules
from muxproxy.errors import InvalidRequest
from muxproxy.generation import QUALITY_TIERS
from muxproxy.settings import (
    AdminSettings,
    ApiKeySettings,
    ConsoleSettings,
    Credits,
    DatabaseSettings,
    JobSettings,
    LimitSettings,
    LogSettings,
    MetricsSettings,
    ModelSettings,
    ProviderSettings,
    RouteSettings,
    S3Settings,
    ServerSettings,
    Settings,
    SettingsError,
    StorageSettings,
    SurfaceSettings,
    WebhookSettings,
)
from muxproxy.settings_checks import check

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from None
    # A model with no ``created`` was configured when the file was last written.
    return parse(raw, os.environ if env is None else env,
                 configured_at=int(os.stat(path).st_mtime))


def parse(raw: Mapping[str, Any], env: Mapping[str, str], *,
          configured_at: int | None = None) -> Settings:
    """``configured_at``: the ``created`` of models that name none (Unix seconds;
    by default now, when the settings are read)."""
    data = _expand(raw, env, "")
    known = {"server", "database", "storage", "limits", "jobs", "surfaces", "admin",
             "metrics", "console", "webhooks", "logging", "keys",
             "providers", "models"}
    _no_unknown(data, known, "")
    providers = _providers(data.get("providers", {}))
    settings = Settings(
        server=_section(ServerSettings, data, "server"),
        database=_section(DatabaseSettings, data, "database"),
        storage=_storage(data),
        limits=_section(LimitSettings, data, "limits"),
        jobs=_section(JobSettings, data, "jobs"),
        surfaces=_section(SurfaceSettings, data, "surfaces"),
        admin=_section(AdminSettings, data, "admin"),
        metrics=_section(MetricsSettings, data, "metrics"),
        console=_section(ConsoleSettings, data, "console"),
        webhooks=_section(WebhookSettings, data, "webhooks"),
        logging=_section(LogSettings, data, "logging"),
        keys=_keys(data.get("keys", [])),
        providers=providers,
        models=_models(data.get("models", {}), providers,
                       configured_at if configured_at is not None else int(time.time())),
    )
    check(settings)
    return settings



def _expand(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise SettingsError(f"{where or 'config'}: environment variable {name} is not set")
        return _ENV_REF.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: _expand(v, env, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _no_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            prefix = f"{where}." if where else ""
            raise SettingsError(f"unknown setting {prefix}{key}")


def _coerce(value: Any, default: Any, where: str) -> Any:
    expected = type(default)
    if expected is float and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif expected is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    elif expected is tuple and isinstance(value, list) and all(
            isinstance(v, str) for v in value):
        return tuple(value)
    elif isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool):
        return value
    raise SettingsError(f"{where}: expected {expected.__name__}, got {value!r}")


def _section(cls: Any, data: Mapping[str, Any], name: str) -> Any:
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        raise SettingsError(f"{name}: expected a table")
    defaults = cls()
    fields = set(cls.__dataclass_fields__)
    _no_unknown(table, fields, name)
    values = {k: _coerce(v, getattr(defaults, k), f"{name}.{k}") for k, v in table.items()}
    return cls(**values)


def _storage(data: Mapping[str, Any]) -> StorageSettings:
    """``[storage]`` with its one sub-table, ``[storage.s3]``."""
    table = data.get("storage", {})
    if not isinstance(table, Mapping):
        raise SettingsError("storage: expected a table")
    rest = {k: v for k, v in table.items() if k != "s3"}
    storage: StorageSettings = _section(StorageSettings, {"storage": rest}, "storage")
    s3: S3Settings = _section(S3Settings, {"storage.s3": table.get("s3", {})}, "storage.s3")
    return replace(storage, s3=s3)


def _keys(raw: Any) -> tuple[ApiKeySettings, ...]:
    if not isinstance(raw, list):
        raise SettingsError("keys: expected an array of tables ([[keys]])")
    keys = []
    for i, item in enumerate(raw):
        where = f"keys[{i}]"
        if not isinstance(item, Mapping):
            raise SettingsError(f"{where}: expected a table")
        _no_unknown(item, {"name", "key", "credits", "unlimited", "rpm", "max_concurrent",
                           "models", "webhook_allow_networks"}, where)
        name, key = _key_rule(key_rules.check_name, item.get("name"), where), item.get("key")
        if not isinstance(key, str) or len(key) < 8:
            raise SettingsError(f"{where}.key: required, at least 8 characters")
        models = item.get("models")
        if models is not None:
            models = _strings(item, "models", where)
        keys.append(ApiKeySettings(
            name=name, key=key,
            credits=_key_rule(key_rules.check_credits,
                              _coerce(item.get("credits", 0), 0, f"{where}.credits"), where),
            unlimited=_coerce(item.get("unlimited", False), False, f"{where}.unlimited"),
            rpm=_optional_positive(item, "rpm", where),
            max_concurrent=_optional_positive(item, "max_concurrent", where),
            models=models,
            webhook_allow_networks=_networks(item, "webhook_allow_networks", where)))
    return tuple(keys)


def _networks(table: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    networks = _strings(table, name, where)
    for i, network in enumerate(networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise SettingsError(f"{where}.{name}[{i}]: not a network: {network!r}") from None
    return networks


def _optional_positive(table: Mapping[str, Any], name: str, where: str) -> int | None:
    value = table.get(name)
    if value is None:
        return None
    number: int = _key_rule(lambda v: key_rules.whole(v, name, 1, key_rules.MAX_LIMIT),
                            _coerce(value, 0, f"{where}.{name}"), where)
    return number


def _key_rule(check: Callable[[Any], Any], value: Any, where: str) -> Any:
    """A ``[[keys]]`` value through the rule the admin API and the CLI apply."""
    try:
        return check(value)
    except InvalidRequest as exc:
        raise SettingsError(f"{where}.{exc.param}: {exc.message}") from None


def _providers(raw: Any) -> dict[str, ProviderSettings]:
    if not isinstance(raw, Mapping):
        raise SettingsError("providers: expected a table")
    result = {}
    defaults = ProviderSettings(name="", kind="")
    for name, table in raw.items():
        where = f"providers.{name}"
        if not isinstance(table, Mapping):
            raise SettingsError(f"{where}: expected a table")
        _no_unknown(table, set(ProviderSettings.__dataclass_fields__) - {"name"}, where)
        kind = table.get("kind")
        if not isinstance(kind, str) or not kind:
            raise SettingsError(f"{where}.kind: required")
        values: dict[str, Any] = {"name": name, "kind": kind}
        for key, value in table.items():
            if key == "kind":
                continue
            if key == "options":
                if not isinstance(value, Mapping):
                    raise SettingsError(f"{where}.options: expected a table")
                values[key] = dict(value)
            else:
                # api_key defaults to None (no key named) but is a string when given.
                default = "" if key == "api_key" else getattr(defaults, key)
                values[key] = _coerce(value, default, f"{where}.{key}")
        result[name] = ProviderSettings(**values)
    return result


def _models(raw: Any, providers: Mapping[str, ProviderSettings],
            configured_at: int) -> dict[str, ModelSettings]:
    if not isinstance(raw, Mapping):
        raise SettingsError("models: expected a table")
    result = {}
    for model_id, table in raw.items():
        where = f'models."{model_id}"'
        if not isinstance(table, Mapping):
            raise SettingsError(f"{where}: expected a table")
        _no_unknown(table, {"routes", "description", "credits", "resolutions", "aspect_ratios",
                            "default_quality", "response_format", "created"}, where)
        routes_raw = table.get("routes")
        if not isinstance(routes_raw, list) or not routes_raw:
            raise SettingsError(f"{where}.routes: at least one route is required")
        routes = []
        for i, route in enumerate(routes_raw):
            rwhere = f"{where}.routes[{i}]"
            if not isinstance(route, Mapping):
                raise SettingsError(f"{rwhere}: expected a table")
            _no_unknown(route, {"provider", "model", "params"}, rwhere)
            provider, model = route.get("provider"), route.get("model")
            if not isinstance(provider, str) or provider not in providers:
                raise SettingsError(f"{rwhere}.provider: unknown provider {provider!r}")
            if not isinstance(model, str) or not model:
                raise SettingsError(f"{rwhere}.model: required")
            params = route.get("params", {})
            if not isinstance(params, Mapping):
                raise SettingsError(f"{rwhere}.params: expected a table")
            routes.append(RouteSettings(provider=provider, model=model, params=dict(params)))
        description = table.get("description", "")
        if not isinstance(description, str):
            raise SettingsError(f"{where}.description: expected a string")
        credits = _credits(table.get("credits", 0), f"{where}.credits")
        result[model_id] = ModelSettings(
            id=model_id, routes=tuple(routes), description=description, credits=credits,
            resolutions=tuple(r.lower() for r in _strings(table, "resolutions", where)),
            aspect_ratios=_strings(table, "aspect_ratios", where),
            default_quality=_default_quality(table.get("default_quality", ""), credits, where),
            response_format=_response_format(table.get("response_format", ""), where),
            created=_created(table.get("created", configured_at), where))
    return result


def _response_format(value: Any, where: str) -> str:
    if value not in ("", "url", "b64_json"):
        raise SettingsError(f"{where}.response_format: expected 'url' or 'b64_json', "
                            f"got {value!r}")
    return str(value)


def _created(value: Any, where: str) -> int:
    """Unix seconds, or a TOML date / date-time."""
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return int(moment.timestamp())
    if isinstance(value, datetime.date):
        return int(datetime.datetime(value.year, value.month, value.day,
                                     tzinfo=datetime.UTC).timestamp())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SettingsError(f"{where}.created: expected Unix seconds or a date, got {value!r}")
    return value


def _default_quality(value: Any, credits: Credits, where: str) -> str:
    """A quality clients may name, and a tier of every entry of the price table that
    has tiers: a request is never priced at a tier its upstream may exceed."""
    if value == "":
        return ""
    if value not in QUALITY_TIERS:
        raise SettingsError(f"{where}.default_quality: expected one of "
                            f"{', '.join(QUALITY_TIERS)}, got {value!r}")
    tier = QUALITY_TIERS[value]
    for resolution, entry in (credits.items() if isinstance(credits, Mapping) else ()):
        if isinstance(entry, Mapping) and tier not in entry:
            raise SettingsError(f"{where}.default_quality: {value!r} is not a tier of "
                                f"{where}.credits.{resolution} ({', '.join(entry)})")
    return str(value)


def _strings(table: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{where}.{name}: expected an array of strings")
    return tuple(value)


def _credits(value: Any, where: str) -> Credits:
    def amount(v: Any, w: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SettingsError(f"{w}: expected a whole number of credits >= 0")
        return v

    if not isinstance(value, Mapping):
        return amount(value, where)
    table: dict[str, int | Mapping[str, int]] = {}
    for resolution, entry in value.items():
        w = f"{where}.{resolution}"
        if isinstance(entry, Mapping):
            table[resolution.lower()] = {q: amount(c, f"{w}.{q}") for q, c in entry.items()}
        else:
            table[resolution.lower()] = amount(entry, w)
    return table

