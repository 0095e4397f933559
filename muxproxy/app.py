"""``create_app(settings)``: the whole gateway, built in one place.

Everything with a lifetime (store, blob storage, HTTP session, providers, webhook relay,
scheduler) is opened in the lifespan and closed in reverse order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
from aiohttp.abc import AbstractResolver
from starlette.applications import Starlette
from starlette.middleware import Middleware

from muxproxy import __version__
from muxproxy.app_state import AppState
from muxproxy.auth import Authenticator, hash_key
from muxproxy.clock import Clock, SystemClock, now_ms
from muxproxy.console import Console
from muxproxy.cors import Cors
from muxproxy.gateway import Gateway
from muxproxy.idempotency import Idempotency
from muxproxy.logs import configure_logging, get_logger
from muxproxy.metrics import Metrics
from muxproxy.middleware import RequestContext
from muxproxy.notify import Signal, open_notifier
from muxproxy.openapi.document import OpenApiDocument
from muxproxy.pipeline.breaker import CircuitBreaker
from muxproxy.pipeline.events import JobEvents
from muxproxy.pipeline.retention import RetentionSweep
from muxproxy.pipeline.runner import JobRunner
from muxproxy.pipeline.scheduler import Scheduler
from muxproxy.providers import build_providers
from muxproxy.providers.base import Provider
from muxproxy.readiness import Readiness
from muxproxy.references import ReferenceFetcher
from muxproxy.settings import Settings
from muxproxy.shutdown import Shutdown
from muxproxy.signing import UrlSigner
from muxproxy.storage import BlobStorage, open_storage
from muxproxy.store import KeyLimits, Store, open_store
from muxproxy.surfaces.mcp import McpHost
from muxproxy.surfaces.registry import client_prefixes, for_settings, mounts
from muxproxy.webhooks.relay import WebhookRelay
from muxproxy.webhooks.ssrf import AddressPolicy, CallbackGuard

log = get_logger("muxproxy.app")

def create_app(settings: Settings, *, clock: Clock | None = None,
               resolver: AbstractResolver | None = None,
               shared_database: bool = False) -> Starlette:
    """``resolver`` replaces DNS for callback and reference URLs (tests map names to
    addresses). ``shared_database``: other processes serve on the same database
    (a worker of ``serve --workers N``)."""
    clock = clock or SystemClock()
    metrics = Metrics()
    log_writer = configure_logging(settings.logging.level, settings.logging.format)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = await _start(settings, clock, metrics, resolver, shared_database)
        app.state.mux = state
        log.info("muxproxy started", providers=sorted(state.providers),
                 models=len(settings.models), public_url=settings.server.public_url)
        try:
            yield
        finally:
            await _stop(state)
            log.info("muxproxy stopped")
            log_writer.flush()

    middleware = [Middleware(RequestContext, metrics=metrics), Middleware(Idempotency)]
    surfaces = for_settings(settings)
    if settings.server.cors_origins:
        middleware.insert(1, Middleware(Cors, origins=settings.server.cors_origins,
                                        prefixes=client_prefixes(surfaces)))
    app = Starlette(routes=mounts(surfaces), middleware=middleware, lifespan=lifespan)
    app.state.openapi = OpenApiDocument(settings)
    if settings.console.enabled:
        app.state.console = Console(settings)
    return app


async def _start(settings: Settings, clock: Clock, metrics: Metrics,
                 resolver: AbstractResolver | None, shared: bool) -> AppState:
    """Open everything. Each closer is registered before its step runs, so a step
    that fails closes what the steps before it (and its own half) opened, in
    reverse order; :func:`_stop` runs the same closers."""
    closers = AsyncExitStack()
    try:
        return await _open(settings, clock, metrics, resolver, shared, closers)
    except BaseException:
        await closers.aclose()
        raise


async def _open(settings: Settings, clock: Clock, metrics: Metrics,
                resolver: AbstractResolver | None, shared: bool,
                closers: AsyncExitStack) -> AppState:
    store, storage = await _open_backends(settings, clock, shared, closers)
    # Client-named images are fetched on a session of their own, behind the address
    # guard; provider calls and their result links stay on ``http``.
    fetcher = ReferenceFetcher(settings.limits, resolver)
    closers.push_async_callback(fetcher.aclose)
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, limit_per_host=64),
        headers={"User-Agent": f"muxproxy/{__version__}"})
    closers.push_async_callback(http.close)
    providers = build_providers(dict(settings.providers), http, clock)
    closers.push_async_callback(_close_providers, providers)
    shutdown = Shutdown(settings.server.graceful_shutdown_seconds)
    signer = UrlSigner(settings.server.secret, settings.server.public_url,
                       settings.storage.url_ttl_seconds, clock)
    events = JobEvents()
    notifier = open_notifier(settings.database, clock, shared=shared)
    breakers = {name: CircuitBreaker(ps.circuit_threshold, ps.circuit_cooldown_seconds, clock)
                for name, ps in settings.providers.items()}
    runner = JobRunner(settings, store, storage, providers, http, clock, metrics, events,
                       breakers, fetcher)
    scheduler = Scheduler(store, providers, runner, clock, settings.jobs, metrics)
    guard = CallbackGuard(AddressPolicy(settings.webhooks.allow_networks), resolver)
    gateway = Gateway(settings, store, storage, providers, signer, clock, metrics,
                      scheduler, events, shutdown, check_callback=guard.check,
                      check_reference=fetcher.check,
                      recheck_seconds=notifier.recheck_seconds)
    relay = WebhookRelay(settings.webhooks, store, clock, metrics, guard, gateway.result_links,
                         lease_margin_seconds=settings.jobs.lease_margin_seconds)
    events.subscribe(relay.on_job)
    retention = RetentionSweep(settings.storage, store, storage, clock)
    auth = Authenticator(store)
    # What other processes on the database change, this one hears here.
    notifier.subscribe(Signal.JOB_ENDED, scheduler.heard_end)
    notifier.subscribe(Signal.JOB_QUEUED, scheduler.queued_elsewhere)
    notifier.subscribe(Signal.KEY_CHANGED, auth.forget_key)
    closers.push_async_callback(notifier.aclose)
    await notifier.start()
    # Stopped with what is left of the grace period since the signal (all of it
    # without one), so these ask the shutdown when they run.
    closers.push_async_callback(lambda: relay.stop(shutdown.remaining()))
    await relay.start()
    closers.push_async_callback(lambda: scheduler.stop(shutdown.remaining()))
    await scheduler.start()
    closers.push_async_callback(retention.stop)
    retention.start()
    mcp = McpHost(settings)
    # Pushed last, so closed first: MCP calls still waiting answer before the store closes.
    closers.push_async_callback(mcp.aclose)
    return AppState(settings=settings, clock=clock, metrics=metrics, store=store,
                    storage=storage, http=http, providers=providers, signer=signer,
                    auth=auth, gateway=gateway, runner=runner,
                    scheduler=scheduler, events=events, notifier=notifier, breakers=breakers,
                    relay=relay, shutdown=shutdown, retention=retention,
                    readiness=Readiness(store, storage, clock), mcp=mcp,
                    closers=closers)


async def _open_backends(settings: Settings, clock: Clock, shared: bool,
                         closers: AsyncExitStack) -> tuple[Store, BlobStorage]:
    store = open_store(settings.database.url, settings.database)
    if shared:
        store.expect_other_processes()
    closers.push_async_callback(store.aclose)
    await store.open()
    for key in settings.keys:
        limits = KeyLimits(unlimited=key.unlimited, rpm_limit=key.rpm,
                           max_concurrent=key.max_concurrent, allowed_models=key.models,
                           webhook_allow_networks=key.webhook_allow_networks)
        await store.upsert_key(key.name, hash_key(key.key), now=now_ms(clock),
                               limits=limits, initial_credits=key.credits)
    storage = open_storage(settings.storage.url, settings.storage)
    closers.push_async_callback(storage.aclose)
    await storage.open()
    return store, storage


async def _close_providers(providers: Mapping[str, Provider]) -> None:
    for provider in providers.values():
        try:
            await provider.aclose()
        except Exception:
            log.warning("provider close failed", provider=provider.name, exc_info=True)


def begin_shutdown(app: Starlette) -> None:
    """A stop signal arrived (called by the server before it drains its requests):
    claim no more jobs, and let waiting requests know when to answer."""
    state: AppState | None = getattr(app.state, "mux", None)
    if state is None:
        return
    log.info("shutting down: no new jobs are started",
             grace_seconds=state.settings.server.graceful_shutdown_seconds)
    state.shutdown.begin()
    state.scheduler.drain()


async def _stop(state: AppState) -> None:
    """Close what :func:`_start` opened, in reverse: the loops, then the providers and
    HTTP sessions, then storage and the store."""
    await state.closers.aclose()
