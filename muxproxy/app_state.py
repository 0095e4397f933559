"""Everything the app builds at start, kept on ``app.state.mux``."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from muxproxy.auth import Authenticator
from muxproxy.clock import Clock
from muxproxy.gateway import Gateway
from muxproxy.metrics import Metrics
from muxproxy.notify import Notifier
from muxproxy.pipeline.breaker import CircuitBreaker
from muxproxy.pipeline.events import JobEvents
from muxproxy.pipeline.retention import RetentionSweep
from muxproxy.pipeline.runner import JobRunner
from muxproxy.pipeline.scheduler import Scheduler
from muxproxy.providers.base import Provider
from muxproxy.readiness import Readiness
from muxproxy.settings import Settings
from muxproxy.shutdown import Shutdown
from muxproxy.signing import UrlSigner
from muxproxy.storage import BlobStorage
from muxproxy.store import Store
from muxproxy.webhooks.relay import WebhookRelay

if TYPE_CHECKING:  # surfaces import this module
    from muxproxy.surfaces.mcp import McpHost


@dataclass
class AppState:
    settings: Settings
    clock: Clock
    metrics: Metrics
    store: Store
    storage: BlobStorage
    http: aiohttp.ClientSession
    providers: Mapping[str, Provider]
    signer: UrlSigner
    auth: Authenticator
    gateway: Gateway
    runner: JobRunner
    scheduler: Scheduler
    events: JobEvents
    notifier: Notifier
    breakers: Mapping[str, CircuitBreaker]
    relay: WebhookRelay
    shutdown: Shutdown
    retention: RetentionSweep
    readiness: Readiness
    # The MCP server behind /mcp, started on its first call (surfaces/mcp.py).
    mcp: McpHost
    # What _stop closes: every closer _start registered, run in reverse.
    closers: AsyncExitStack
