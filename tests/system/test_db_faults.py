"""Faults of the gateway's own database: a write lock held past the busy timeout
is answered 503 with Retry-After in each surface's shape, never a bare 500, and
nothing is stored half-way."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.gateway import KEY_A, RunningGateway, merge, run_gateway
from tests.support.images import png_bytes

ADMIN = "admin-token-for-tests-0001"
PROMPT = "a lighthouse at dusk"


@pytest.fixture
async def gw(config: dict[str, Any]) -> AsyncIterator[RunningGateway]:
    extra = {"database": {"busy_timeout_seconds": 0.2}, "admin": {"token": ADMIN}}
    async with run_gateway(merge(config, extra)) as running:
        yield running


@contextmanager
def write_lock(gw: RunningGateway) -> Iterator[None]:
    """Another process's write transaction, as a sqlite3 shell would hold it."""
    other = sqlite3.connect(gw.settings.database.url.removeprefix("sqlite:///"),
                            isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


CALLS: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
    ("native", "/api/v1/images/generations", {"model": "demo-image", "prompt": PROMPT}, {}),
    ("native", "/api/v1/images/generations", {"model": "demo-image", "prompt": PROMPT},
     {"Idempotency-Key": "held-lock-1"}),
    ("openai", "/v1/images/generations", {"model": "demo-image", "prompt": PROMPT}, {}),
    ("modelmux", "/api/v1/generations", {"model": "demo-image", "prompt": PROMPT}, {}),
    ("admin", "/admin/keys/{alpha}/topup", {"amount": 5}, {}),
    ("admin", "/admin/keys", {"name": "charlie"}, {}),
    ("admin", "/admin/keys/{bravo}/revoke", {}, {}),
]


def shape_of(body: Any) -> str:
    if isinstance(body, dict) and set(body) == {"code", "msg", "data"}:
        return "native"
    if isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], dict):
        assert set(body["error"]) == {"message", "type", "param", "code"}
        return "openai"
    if isinstance(body, dict) and set(body) == {"error", "code"}:
        return "modelmux"  # the admin API shares this shape
    return "unknown"


@pytest.mark.parametrize(("surface", "path", "body", "headers"), CALLS,
                         ids=[f"{c[0]}{'-idem' if c[3] else ''}:{c[1]}" for c in CALLS])
async def test_a_held_write_lock_answers_503_with_retry_after(
        gw: RunningGateway, surface: str, path: str, body: dict[str, Any],
        headers: dict[str, str]) -> None:
    auth = f"Bearer {ADMIN if surface == 'admin' else KEY_A}"
    # The admin API addresses keys by id.
    path = path.format(**{k.name: k.id for k in await gw.state.store.list_keys()})
    jobs_before = await gw.state.store.list_jobs("alpha")
    with write_lock(gw):
        async with gw.http.post(gw.url + path, json=body,
                                headers={"Authorization": auth, **headers}) as resp:
            status, answer = resp.status, await resp.json()
            retry_after = resp.headers.get("Retry-After")
    assert status == 503, answer
    assert retry_after is not None and int(retry_after) >= 1
    assert shape_of(answer) == ("modelmux" if surface == "admin" else surface)
    assert "database" in str(answer)
    assert await gw.state.store.list_jobs("alpha") == jobs_before
    # The lock gone, the same request goes through.
    async with gw.http.post(gw.url + path, json=body,
                            headers={"Authorization": auth, **headers}) as resp:
        assert resp.status in (200, 201), await resp.text()


async def test_inputs_of_a_job_the_database_refused_are_not_left_behind(
        gw: RunningGateway) -> None:
    form = {"model": "demo-image", "prompt": PROMPT}
    images = Path(gw.settings.storage.url.removeprefix("file://"))
    with write_lock(gw):
        data = aiohttp.FormData(form)
        data.add_field("image", png_bytes(), filename="a.png", content_type="image/png")
        async with gw.http.post(gw.url + "/v1/images/edits", data=data,
                                headers=gw.headers()) as resp:
            assert resp.status == 503, await resp.text()
    assert stored_files(images) == []


def stored_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("fault", ["full", "read-only"])
async def test_a_full_or_read_only_database_answers_503(gw: RunningGateway, fault: str) -> None:
    # Real SQLite faults on the gateway's own write connection: a page limit at the
    # current size is a full disk to SQLite (SQLITE_FULL); query_only refuses every
    # write as a read-only file does (SQLITE_READONLY).
    writer = gw.state.store._writer._conn  # type: ignore[attr-defined]
    if fault == "full":
        pages = writer.execute("PRAGMA page_count").fetchone()[0]
        writer.execute(f"PRAGMA max_page_count = {pages}")
    else:
        writer.execute("PRAGMA query_only = 1")
    body = {"model": "demo-image", "prompt": "a lighthouse " * 2000}
    try:
        async with gw.http.post(gw.url + "/api/v1/images/generations", json=body,
                                headers=gw.headers()) as resp:
            status, answer = resp.status, await resp.json()
            retry_after = resp.headers.get("Retry-After")
        async with gw.http.post(gw.url + "/v1/images/generations", json=body,
                                headers=gw.headers()) as resp:
            oa_status, oa_answer = resp.status, await resp.json()
    finally:
        writer.execute("PRAGMA query_only = 0")
        writer.execute("PRAGMA max_page_count = 1073741823")
    assert (status, shape_of(answer), retry_after) == (503, "native", "2"), answer
    assert (oa_status, shape_of(oa_answer)) == (503, "openai"), oa_answer
    assert oa_answer["error"]["code"] == "store_unavailable"
    assert await gw.state.store.list_jobs("alpha") == []
    async with gw.http.post(gw.url + "/api/v1/images/generations", json=body,
                            headers=gw.headers()) as resp:
        assert resp.status == 200, await resp.text()
