"""``/readyz`` reports not ready while the database or the image storage fails,
and ready again once they recover; the write probes are cached briefly."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from muxproxy.clock import ManualClock
from muxproxy.readiness import CACHE_SECONDS
from tests.support.gateway import RunningGateway, merge, run_gateway


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def gw(config: dict[str, Any], clock: ManualClock) -> AsyncIterator[RunningGateway]:
    async with run_gateway(merge(config, {"database": {"busy_timeout_seconds": 0.2}}),
                           clock=clock) as running:
        yield running


async def readyz(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    async with gw.http.get(gw.url + "/readyz") as resp:
        return resp.status, await resp.json()


def break_folder(root: Path) -> None:
    """A real fault (chmod does not stop root): the folder becomes a plain file."""
    shutil.rmtree(root)
    root.write_text("not a folder")


def files_in(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def mend_folder(root: Path) -> None:
    root.unlink()
    root.mkdir()


async def test_readyz_follows_the_image_storage(gw: RunningGateway, clock: ManualClock) -> None:
    status, body = await readyz(gw)
    assert (status, body["status"], body["storage"]) == (200, "ready", "ok")
    root = Path(gw.settings.storage.url.removeprefix("file://"))
    break_folder(root)
    clock.advance(CACHE_SECONDS)
    status, body = await readyz(gw)
    assert status == 503, body
    assert (status, body["status"], body["storage"], body["store"]) == (
        503, "unavailable", "failing", "ok")
    mend_folder(root)
    clock.advance(CACHE_SECONDS)
    status, body = await readyz(gw)
    assert (status, body["status"], body["storage"]) == (200, "ready", "ok")
    assert files_in(root) == []  # the probe leaves nothing behind


async def test_readyz_follows_the_database(gw: RunningGateway, clock: ManualClock) -> None:
    assert (await readyz(gw))[0] == 200
    other = sqlite3.connect(gw.settings.database.url.removeprefix("sqlite:///"),
                            isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # held past the busy timeout
        clock.advance(CACHE_SECONDS)
        status, body = await readyz(gw)
        assert status == 503, body
        assert (status, body["status"], body["store"], body["storage"]) == (
            503, "unavailable", "unreachable", "ok")
        started = time.monotonic()
        status, _ = await readyz(gw)  # cached: no second wait for the lock
        assert status == 503
        assert time.monotonic() - started < 0.15
        other.execute("ROLLBACK")
    finally:
        other.close()
    clock.advance(CACHE_SECONDS)
    status, body = await readyz(gw)
    assert (status, body["status"], body["store"]) == (200, "ready", "ok")


async def test_readyz_fails_at_once_when_the_database_is_unreachable(
        gw: RunningGateway) -> None:
    assert (await readyz(gw))[0] == 200
    await gw.state.store.aclose()
    try:
        status, body = await readyz(gw)  # the read runs on every call, uncached
        assert (status, body["store"]) == (503, "unreachable")
    finally:
        await gw.state.store.open()
