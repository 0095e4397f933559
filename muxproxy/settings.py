"""Settings: one frozen tree, loaded once from ``config.toml``.

String values may reference the environment as ``${NAME}`` or ``${NAME:-default}``.
Every problem is reported as a :class:`SettingsError` naming the offending key, when
the file loads: :func:`load_settings` runs every check ``serve`` depends on, the
provider kinds' and storage backends' own included (:mod:`muxproxy.settings_checks`).

This module holds the tree; reading it is :mod:`muxproxy.settings_parse`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    # Browser origins allowed to call the client surfaces (CORS), e.g.
    # "https://app.example"; "*" allows any. Empty: no CORS headers at all.
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///data/muxproxy.db"
    # How long a write waits for a lock held by another process before it is
    # answered 503 with Retry-After.
    busy_timeout_seconds: float = 5.0
    # PostgreSQL only (ignored by SQLite): connections in each process's pool, the
    # longest a statement may run before it is cancelled (answered 503), and how long
    # connecting, or waiting for a free pooled connection, may take.
    pool_size: int = 10
    statement_timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class S3Settings:
    """``[storage.s3]``: where an ``s3://bucket/prefix`` storage URL's bucket is served
    and how the gateway signs in. Empty values leave each to the standard AWS chain
    (``AWS_*`` environment variables, ``~/.aws/config`` and ``credentials``, then the
    container's or instance's role)."""

    # Empty: AWS itself, for the region. R2, MinIO, B2 and friends name their own.
    endpoint_url: str = ""
    region: str = ""
    # Bucket in the path (https://host/bucket/key) instead of the host name
    # (https://bucket.host/key): MinIO and most self-hosted servers want this.
    path_style: bool = False
    # Use ${VAR} references; all three empty: the AWS chain, with ``profile`` if set.
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""
    profile: str = ""
    # Each request: the time to connect and to wait for the next bytes, and the tries
    # (the first included) before a failure is the job's storage_error or a 503.
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 30.0
    max_attempts: int = 3
    max_connections: int = 64


@dataclass(frozen=True)
class StorageSettings:
    url: str = "file://data/images"
    url_ttl_seconds: int = 3600
    # With a backend that signs URLs of its own (s3://): image links and downloads
    # answer with (or 302 to) a presigned bucket URL valid url_ttl_seconds, so image
    # bytes never pass through the gateway. Ignored by file:// storage.
    redirect: bool = False
    # Result images (and any input left over) are deleted this long after their job
    # ended; 0 keeps them forever.
    retention_days: float = 30.0
    # How often the retention sweep looks for expired blobs.
    sweep_interval_seconds: float = 600.0
    s3: S3Settings = field(default_factory=S3Settings)


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
    # Below 598 s: an OpenAI-surface call (deadline + 2 s) then ends before the official
    # SDKs' default 600 s timeout, whose retry would otherwise meet a running job.
    deadline_seconds: float = 570.0
    max_attempts: int = 3
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 60.0
    poll_initial_seconds: float = 1.0
    poll_cap_seconds: float = 15.0
    lease_margin_seconds: float = 30.0
    # How often the scheduler looks for overdue jobs, lapsed leases and due jobs
    # nobody woke it for, and renews the leases of its running steps.
    sweep_seconds: float = 1.0


@dataclass(frozen=True)
class SurfaceSettings:
    # How long POST /v1/images/* waits for its job before answering 504 (the job runs
    # on). 0: the job's whole life (jobs.deadline_seconds), so no 504 while it runs.
    openai_wait_seconds: float = 0.0
    # The model used when an OpenAI or ModelMux request names none; "" = the first model.
    default_model: str = ""
    # How long an MCP generate_image or edit_image call waits for its job before it
    # answers with the job id and asks for get_generation (the job runs on).
    mcp_wait_seconds: float = 50.0


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
class ConsoleSettings:
    # The web console (docs/console.md), served by the gateway under ``path``. Only
    # the admin token or an API key signs in, so it is on by default.
    enabled: bool = True
    path: str = "/console"
    # How long a sign-in lasts.
    session_hours: float = 12.0


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
    # The OpenAI surface's response_format when a generation sends none: "url" or
    # "b64_json"; "" means as OpenAI answers (b64_json for GPT Image ids, else url).
    response_format: str = ""
    # When the model was configured, in Unix seconds (GET /v1/models "created"):
    # as set, else when the config file was last written, else when it was read.
    created: int = 0


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
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    logging: LogSettings = field(default_factory=LogSettings)
    keys: tuple[ApiKeySettings, ...] = ()
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    models: Mapping[str, ModelSettings] = field(default_factory=dict)


def sqlite_path(url: str) -> Path:
    """``sqlite:///rel/path.db`` is relative to the working directory;
    ``sqlite:////abs/path.db`` is absolute."""
    return Path(url.removeprefix("sqlite:///"))


def file_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))


# The parser builds the classes above, so its module imports this one and is
# imported here only when called.
def load_settings(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a TOML file; relative storage and database paths stay as written."""
    from muxproxy.settings_parse import load
    return load(path, env)


def parse_settings(raw: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Validate a config as TOML would give it, with ``${NAME}`` references from ``env``."""
    from muxproxy.settings_parse import parse
    return parse(raw, env)
