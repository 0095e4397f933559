"""Is the gateway able to do its work: its database and its blob storage.

A read of the store runs on every ``/readyz`` (microseconds); the probes that
write (one row in the store, one blob written, read back and deleted) run at most
once per ``CACHE_SECONDS`` of the app's clock, each bounded by ``PROBE_SECONDS``,
and concurrent calls share one probe. So a scrape every second costs next to
nothing, a lock held past the busy timeout, a full disk, a read-only database or
an unusable image folder make the gateway not ready within ``CACHE_SECONDS``, and
it is ready again as soon as they recover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from muxproxy.clock import Clock, now_ms
from muxproxy.logs import get_logger
from muxproxy.storage import BlobStorage
from muxproxy.store import Store

log = get_logger("muxproxy.readiness")

CACHE_SECONDS = 2.0
PROBE_SECONDS = 1.0


@dataclass(frozen=True)
class Health:
    store: bool
    storage: bool

    @property
    def ready(self) -> bool:
        return self.store and self.storage


class Readiness:
    def __init__(self, store: Store, storage: BlobStorage, clock: Clock) -> None:
        self.store = store
        self.storage = storage
        self.clock = clock
        self._last: tuple[float, Health] | None = None
        self._probe: asyncio.Task[Health] | None = None

    async def check(self) -> Health:
        reachable = await _ok("store read", self.store.ping())
        last = self._last
        if last is None or self.clock.now() - last[0] >= CACHE_SECONDS:
            if self._probe is None:
                self._probe = asyncio.create_task(self._run_probes())
            probe = self._probe
            # shield: one caller going away must not cancel the probe the others share
            health = await asyncio.shield(probe)
        else:
            health = last[1]
        return Health(store=reachable and health.store, storage=health.storage)

    async def _run_probes(self) -> Health:
        try:
            store, storage = await asyncio.gather(
                _ok("store write", self.store.probe_write(now_ms(self.clock))),
                _ok("storage", self.storage.check()))
            health = Health(store=store, storage=storage)
            self._last = (self.clock.now(), health)
            return health
        finally:
            self._probe = None


async def _ok(what: str, probe: Awaitable[None]) -> bool:
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            await probe
    except Exception as exc:
        log.warning("readiness probe failed", probe=what, error=type(exc).__name__)
        return False
    return True
