"""The rules a loaded settings tree must pass beyond each value's type.

The generic rules are here; provider kinds and storage backends judge their own
settings (``Provider.validate``, ``check_store_url``, ``check_storage_url``), called
from :func:`check` so that nothing a config names is first found wrong at start.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from muxproxy.settings import (
    ConsoleSettings,
    LimitSettings,
    ServerSettings,
    Settings,
    SettingsError,
    WebhookSettings,
)

# A CORS origin as browsers send it: scheme, host, optional port; nothing after.
ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


def check(settings: Settings) -> None:
    """Every rule a loaded config must pass, the backends' and provider kinds' own
    included: ``check-config`` and ``serve`` both load through here, so a config one
    refuses the other refuses too, before anything is opened."""
    _check_backends(settings)
    if not settings.server.public_url.startswith(("http://", "https://")):
        raise SettingsError("server.public_url: must start with http:// or https://")
    if len(settings.server.secret) < 16:
        raise SettingsError("server.secret: required, at least 16 characters")
    for origin in settings.server.cors_origins:
        if origin != "*" and not ORIGIN.fullmatch(origin):
            raise SettingsError(f"server.cors_origins: {origin!r} is not an origin: "
                                "scheme://host[:port] with no path, or \"*\"")
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
    if not 0 < settings.jobs.sweep_seconds <= settings.jobs.lease_margin_seconds / 2:
        # Leases are renewed on sweeps, once half of one is gone.
        raise SettingsError("jobs.sweep_seconds: must be above 0 and at most half of "
                            "jobs.lease_margin_seconds")
    if settings.surfaces.openai_wait_seconds < 0:
        raise SettingsError("surfaces.openai_wait_seconds: must be positive, or 0 for "
                            "jobs.deadline_seconds")
    if settings.surfaces.mcp_wait_seconds <= 0:
        raise SettingsError("surfaces.mcp_wait_seconds: must be positive")
    default_model = settings.surfaces.default_model
    if default_model and default_model not in settings.models:
        raise SettingsError(f"surfaces.default_model: unknown model {default_model!r}")
    _check_server(settings.server)
    _check_console(settings.console)
    _check_webhooks(settings.webhooks)
    _check_limits(settings.limits)
    _check_faults(settings)
    names = [k.name for k in settings.keys]
    if len(set(names)) != len(names):
        raise SettingsError("keys: names must be unique")
    _check_providers(settings)


def _check_faults(settings: Settings) -> None:
    if settings.database.busy_timeout_seconds < 0:
        raise SettingsError("database.busy_timeout_seconds: must not be negative")
    if settings.database.pool_size < 1:
        raise SettingsError("database.pool_size: must be at least 1")
    for name in ("statement_timeout_seconds", "connect_timeout_seconds"):
        if getattr(settings.database, name) <= 0:
            raise SettingsError(f"database.{name}: must be positive")
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


# First path segments other surfaces serve: the console may not shadow them.
TAKEN_SEGMENTS = frozenset({"api", "v1", "admin", "files", "mcp", "healthz", "readyz",
                            "metrics", "openapi.json"})


def _check_console(console: ConsoleSettings) -> None:
    path = console.path
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", path) or ".." in path:
        raise SettingsError("console.path: must be a path such as '/console' (letters, "
                            "digits, '.', '_', '~', '-'; no trailing slash)")
    if path.split("/")[1] in TAKEN_SEGMENTS:
        raise SettingsError(f"console.path: {path!r} is under a path the gateway serves "
                            "already")
    if console.session_hours <= 0:
        raise SettingsError("console.session_hours: must be positive")


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



def _check_backends(settings: Settings) -> None:
    # Imported here: the backends' packages import this package's classes.
    from muxproxy.storage import check_storage_url
    from muxproxy.store import check_store_url

    check_store_url(settings.database.url)
    check_storage_url(settings.storage.url, settings.storage)


def _check_providers(settings: Settings) -> None:
    """Each kind judges its own ``options`` and ``base_url``; only the kinds named
    are imported."""
    from muxproxy.providers import validate_provider

    for provider in settings.providers.values():
        validate_provider(provider)


def choose(table: Mapping[str, str], name: str, where: str, what: str) -> Any:
    """The object that ``table``, a table of ``"module:attribute"`` import strings,
    names for ``name``, imported now: an alternative with dependencies of its own
    costs nothing until a config chooses it."""
    try:
        target = table[name]
    except KeyError:
        prefix = f"{where}: " if where else ""
        raise SettingsError(f"{prefix}unknown {what} {name!r}; known: "
                            f"{', '.join(sorted(table))}") from None
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)

