"""Settings: one frozen tree, loaded once from ``config.toml``.

String values may reference the environment as ``${NAME}`` or ``${NAME:-default}``.
Every problem is reported as a :class:`SettingsError` naming the offending key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from muxproxy import keys as key_rules
from muxproxy.errors import InvalidRequest
from muxproxy.generation import QUALITY_TIERS

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SettingsError(ValueError):
    """The configuration is unusable; the message names the key at fault."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    secret: str = ""
    graceful_shutdown_seconds: float = 10.0
    # The HTTP edge's bounds (see muxproxy/edge.py): the request head's size, the
    # time to receive the head and then the body, an idle kept-alive connection's
    # life, and the open connections beyond which only /healthz and /readyz answer.
    max_header_bytes: int = 64 * 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 120.0
    keepalive_timeout_seconds: float = 5.0
    max_connections: int = 4096


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///data/muxproxy.db"
    # How long a write waits for a lock held by another process before it is
    # answered 503 with Retry-After.
    busy_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class StorageSettings:
    url: str = "file://data/images"
    url_ttl_seconds: int = 3600
    # Result images (and any input left over) are deleted this long after their job
    # ended; 0 keeps them forever.
    retention_days: float = 30.0
    # How often the retention sweep looks for expired blobs.
    sweep_interval_seconds: float = 600.0


@dataclass(frozen=True)
class LimitSettings:
    max_body_bytes: int = 20 * 1024 * 1024
    max_prompt_chars: int = 32_000
    max_n: int = 10
    max_reference_images: int = 16
    max_image_bytes: int = 10 * 1024 * 1024
    max_download_bytes: int = 50 * 1024 * 1024
    idempotency_ttl_seconds: int = 86400
    # Reference images named by URL: all of a job's downloads together (each one
    # is bounded by max_image_bytes), and the time one download may take.
    max_reference_total_bytes: int = 50 * 1024 * 1024
    reference_timeout_seconds: float = 30.0
    # Networks a reference URL may reach although they are not public (CIDR).
    reference_allow_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobSettings:
    deadline_seconds: float = 600.0
    max_attempts: int = 3
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 60.0
    poll_initial_seconds: float = 1.0
    poll_cap_seconds: float = 15.0
    lease_margin_seconds: float = 30.0


@dataclass(frozen=True)
class SurfaceSettings:
    # How long POST /v1/images/* waits for its job before answering 504 (the job runs
    # on). 0: the job's whole life (jobs.deadline_seconds), so no 504 while it runs.
    openai_wait_seconds: float = 0.0
    # The model used when an OpenAI or ModelMux request names none; "" = the first model.
    default_model: str = ""


@dataclass(frozen=True)
class WebhookSettings:
    """The ``callback_url`` relay. Waits are spread by +/- ``jitter`` (a fraction)."""

    # Attempts right after a task ends, ``quick_backoff_seconds`` x 1, 2, 4 ... apart.
    quick_attempts: int = 3
    quick_backoff_seconds: float = 1.0
    # Then background attempts, starting this far apart and doubling up to the max,
    # until ``retry_window_seconds`` after the first attempt.
    background_interval_seconds: float = 30.0
    background_max_interval_seconds: float = 300.0
    retry_window_seconds: float = 1800.0
    attempt_timeout_seconds: float = 10.0
    jitter: float = 0.1
    # A 429/5xx ``Retry-After`` is honoured up to this many seconds.
    retry_after_max_seconds: float = 300.0
    max_concurrency: int = 16
    max_per_host: int = 4
    # Slots one key's deliveries may hold at once, so one tenant's slow receivers
    # cannot take every slot.
    max_per_key: int = 4
    # Attempts kept per delivery (the oldest are pruned as new ones are recorded).
    max_attempts_kept: int = 50
    # Networks any key's callbacks may reach although they are not public (CIDR
    # strings). Every tenant gets them: on a shared install grant a network to one
    # key instead ([[keys]] webhook_allow_networks).
    allow_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    format: str = "json"


@dataclass(frozen=True)
class ApiKeySettings:
    name: str
    key: str
    # Credits given when the key is first created (later top-ups go through the
    # admin API or CLI); unlimited keys are never refused for their balance.
    credits: int = 0
    unlimited: bool = False
    rpm: int | None = None
    max_concurrent: int | None = None
    models: tuple[str, ...] | None = None
    # Networks (CIDR) this key's callbacks may reach although they are not public,
    # on top of webhooks.allow_networks; other keys' callbacks still may not.
    webhook_allow_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdminSettings:
    # The admin API (/admin/) answers only to this bearer token; empty disables it.
    token: str = ""


@dataclass(frozen=True)
class MetricsSettings:
    # /metrics answers only to this bearer token; empty leaves it open.
    token: str = ""


@dataclass(frozen=True)
class ProviderSettings:
    name: str
    kind: str
    base_url: str = ""
    # None when the config names no key (a local server may need none); "" when it
    # names one that is empty, such as an unset ${VAR:-}.
    api_key: str | None = None
    timeout_seconds: float = 120.0
    max_concurrency: int = 8
    # The circuit opens after this many transient failures in a row, for the cooldown.
    circuit_threshold: int = 5
    circuit_cooldown_seconds: float = 30.0
    # The largest answer read from this upstream (JSON with inline base64 images
    # included); a longer one fails the job instead of filling the memory.
    max_response_bytes: int = 128 * 1024 * 1024
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteSettings:
    provider: str
    model: str
    params: Mapping[str, Any] = field(default_factory=dict)


# A price: credits per image, flat, by resolution, or by resolution then quality.
Credits = int | Mapping[str, "int | Mapping[str, int]"]


@dataclass(frozen=True)
class ModelSettings:
    id: str
    routes: tuple[RouteSettings, ...]
    description: str = ""
    credits: Credits = 0
    # Allowed values; empty means the providers decide.
    resolutions: tuple[str, ...] = ()
    aspect_ratios: tuple[str, ...] = ()
    # The quality a request that omits it (or sends "auto") is priced at and sent
    # upstream with; "" means the dearest tier of the price entry.
    default_quality: str = ""


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    surfaces: SurfaceSettings = field(default_factory=SurfaceSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    logging: LogSettings = field(default_factory=LogSettings)
    keys: tuple[ApiKeySettings, ...] = ()
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    models: Mapping[str, ModelSettings] = field(default_factory=dict)


def load_settings(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a TOML file; relative storage and database paths stay as written."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: invalid TOML: {exc}") from None
    return parse_settings(raw, os.environ if env is None else env)


def parse_settings(raw: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    data = _expand(raw, env, "")
    known = {"server", "database", "storage", "limits", "jobs", "surfaces", "admin",
             "metrics", "webhooks", "logging", "keys",
             "providers", "models"}
    _no_unknown(data, known, "")
    providers = _providers(data.get("providers", {}))
    settings = Settings(
        server=_section(ServerSettings, data, "server"),
        database=_section(DatabaseSettings, data, "database"),
        storage=_section(StorageSettings, data, "storage"),
        limits=_section(LimitSettings, data, "limits"),
        jobs=_section(JobSettings, data, "jobs"),
        surfaces=_section(SurfaceSettings, data, "surfaces"),
        admin=_section(AdminSettings, data, "admin"),
        metrics=_section(MetricsSettings, data, "metrics"),
        webhooks=_section(WebhookSettings, data, "webhooks"),
        logging=_section(LogSettings, data, "logging"),
        keys=_keys(data.get("keys", [])),
        providers=providers,
        models=_models(data.get("models", {}), providers),
    )
    _check(settings)
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


def _models(raw: Any, providers: Mapping[str, ProviderSettings]) -> dict[str, ModelSettings]:
    if not isinstance(raw, Mapping):
        raise SettingsError("models: expected a table")
    result = {}
    for model_id, table in raw.items():
        where = f'models."{model_id}"'
        if not isinstance(table, Mapping):
            raise SettingsError(f"{where}: expected a table")
        _no_unknown(table, {"routes", "description", "credits", "resolutions", "aspect_ratios",
                            "default_quality"}, where)
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
            default_quality=_default_quality(table.get("default_quality", ""), credits, where))
    return result


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


def _check(settings: Settings) -> None:
    if not settings.database.url.startswith("sqlite://"):
        raise SettingsError("database.url: only sqlite:///path is supported in this build")
    if not settings.storage.url.startswith("file://"):
        raise SettingsError("storage.url: only file://path is supported in this build")
    if not settings.server.public_url.startswith(("http://", "https://")):
        raise SettingsError("server.public_url: must start with http:// or https://")
    if len(settings.server.secret) < 16:
        raise SettingsError("server.secret: required, at least 16 characters")
    if settings.logging.format not in {"json", "console"}:
        raise SettingsError("logging.format: must be 'json' or 'console'")
    for name, provider in settings.providers.items():
        if provider.max_concurrency < 1:
            raise SettingsError(f"providers.{name}.max_concurrency: must be at least 1")
        if provider.timeout_seconds <= 0:
            raise SettingsError(f"providers.{name}.timeout_seconds: must be positive")
        if provider.circuit_threshold < 1:
            raise SettingsError(f"providers.{name}.circuit_threshold: must be at least 1")
        if provider.max_response_bytes < 64 * 1024:
            raise SettingsError(f"providers.{name}.max_response_bytes: must be at least 65536")
    if settings.jobs.max_attempts < 1:
        raise SettingsError("jobs.max_attempts: must be at least 1")
    if settings.surfaces.openai_wait_seconds < 0:
        raise SettingsError("surfaces.openai_wait_seconds: must be positive, or 0 for "
                            "jobs.deadline_seconds")
    default_model = settings.surfaces.default_model
    if default_model and default_model not in settings.models:
        raise SettingsError(f"surfaces.default_model: unknown model {default_model!r}")
    _check_server(settings.server)
    _check_webhooks(settings.webhooks)
    _check_limits(settings.limits)
    _check_faults(settings)
    names = [k.name for k in settings.keys]
    if len(set(names)) != len(names):
        raise SettingsError("keys: names must be unique")


def _check_faults(settings: Settings) -> None:
    if settings.database.busy_timeout_seconds < 0:
        raise SettingsError("database.busy_timeout_seconds: must not be negative")
    if settings.storage.retention_days < 0:
        raise SettingsError("storage.retention_days: must not be negative (0 keeps forever)")
    if settings.storage.sweep_interval_seconds <= 0:
        raise SettingsError("storage.sweep_interval_seconds: must be positive")


def _check_server(server: ServerSettings) -> None:
    if server.max_header_bytes < 1024:
        raise SettingsError("server.max_header_bytes: must be at least 1024")
    if server.max_connections < 1:
        raise SettingsError("server.max_connections: must be at least 1")
    for name in ("header_timeout_seconds", "body_timeout_seconds",
                 "keepalive_timeout_seconds"):
        if getattr(server, name) <= 0:
            raise SettingsError(f"server.{name}: must be positive")


def _check_limits(limits: LimitSettings) -> None:
    # 0 reference images is a choice (no edits); a 0 anywhere else refuses everything.
    for name in ("max_body_bytes", "max_prompt_chars", "max_n", "max_image_bytes",
                 "max_download_bytes", "idempotency_ttl_seconds"):
        if getattr(limits, name) < 1:
            raise SettingsError(f"limits.{name}: must be at least 1")
    if limits.max_reference_images < 0:
        raise SettingsError("limits.max_reference_images: must not be negative")
    if limits.max_reference_total_bytes < 1 or limits.reference_timeout_seconds <= 0:
        raise SettingsError("limits: max_reference_total_bytes and "
                            "reference_timeout_seconds must be positive")
    _check_networks("limits.reference_allow_networks", limits.reference_allow_networks)


def _check_webhooks(hooks: WebhookSettings) -> None:
    for name in ("quick_attempts", "max_concurrency", "max_per_host", "max_per_key",
                 "max_attempts_kept"):
        if getattr(hooks, name) < 1:
            raise SettingsError(f"webhooks.{name}: must be at least 1")
    for name in ("quick_backoff_seconds", "background_interval_seconds",
                 "background_max_interval_seconds", "attempt_timeout_seconds"):
        if getattr(hooks, name) <= 0:
            raise SettingsError(f"webhooks.{name}: must be positive")
    if hooks.retry_window_seconds < 0 or hooks.retry_after_max_seconds < 0:
        raise SettingsError("webhooks: retry_window_seconds and retry_after_max_seconds "
                            "must not be negative")
    if not 0 <= hooks.jitter < 1:
        raise SettingsError("webhooks.jitter: must be at least 0 and below 1")
    _check_networks("webhooks.allow_networks", hooks.allow_networks)


def _check_networks(where: str, networks: tuple[str, ...]) -> None:
    for i, network in enumerate(networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise SettingsError(f"{where}[{i}]: not a network: {network!r}") from None


def sqlite_path(url: str) -> Path:
    """``sqlite:///rel/path.db`` is relative to the working directory;
    ``sqlite:////abs/path.db`` is absolute."""
    return Path(url.removeprefix("sqlite:///"))


def file_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))
