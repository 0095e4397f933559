"""Results are kept ``storage.retention_days`` after their job ended (0: forever);
the sweep, driven by the app's clock, deletes expired results and any uploaded
input an ended job left behind; expired links and downloads answer 404 in their
surface's shape."""

from __future__ import annotations

import base64
import collections
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from muxproxy.clock import ManualClock
from muxproxy.pipeline import retention
from tests.support.gateway import RunningGateway, merge, run_gateway
from tests.support.images import png_bytes
from tests.support.wait import eventually

DAY = 86_400.0
PROMPT = "a lighthouse at dusk"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def gateway_with(config: dict[str, Any], clock: ManualClock,
                       days: float) -> AsyncIterator[RunningGateway]:
    extra = {"storage": {"retention_days": days, "sweep_interval_seconds": 600,
                         "url_ttl_seconds": 10 * 365 * 86400}}
    async with run_gateway(merge(config, extra), clock=clock) as gw:
        yield gw


@pytest.fixture
async def gw(config: dict[str, Any], clock: ManualClock) -> AsyncIterator[RunningGateway]:
    async for running in gateway_with(config, clock, 2):
        yield running


@pytest.fixture
async def forever(config: dict[str, Any], clock: ManualClock
                  ) -> AsyncIterator[RunningGateway]:
    async for running in gateway_with(config, clock, 0):
        yield running


async def get(gw: RunningGateway, url: str) -> tuple[int, Any, str]:
    async with gw.http.get(url, headers=gw.headers()) as resp:
        kind = resp.headers.get("Content-Type", "")
        body = await resp.json() if kind.startswith("application/json") else await resp.read()
        return resp.status, body, kind


async def native_job(gw: RunningGateway, **extra: Any) -> tuple[str, str]:
    task_id = await gw.submit({"model": "demo-image", "prompt": PROMPT, **extra})
    done = await gw.wait_terminal(task_id)
    assert done["state"] == "completed", done
    return task_id, done["resultUrls"][0]


async def modelmux_job(gw: RunningGateway) -> str:
    async with gw.http.post(gw.url + "/api/v1/generations", headers=gw.headers(),
                            json={"model": "demo-image", "prompt": PROMPT}) as resp:
        assert resp.status == 200, await resp.text()
        job_id: str = (await resp.json())["historyId"]
    await gw.wait_terminal(job_id)
    return job_id


async def openai_url(gw: RunningGateway) -> str:
    async with gw.http.post(gw.url + "/v1/images/generations", headers=gw.headers(),
                            json={"model": "demo-image", "prompt": PROMPT,
                                  "response_format": "url"}) as resp:
        assert resp.status == 200, await resp.text()
        url: str = (await resp.json())["data"][0]["url"]
    return url


def blobs(gw: RunningGateway, kind: str) -> list[Path]:
    root = Path(gw.settings.storage.url.removeprefix("file://")) / kind
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def next_sweep(gw: RunningGateway, clock: ManualClock, seconds: float) -> None:
    """Move the clock on and wait for the sweep that wakes at the new time."""
    passes = gw.state.retention.passes
    clock.advance(seconds)
    await eventually(lambda: gw.state.retention.passes > passes)


async def test_expired_results_are_deleted_and_their_links_answer_404(
        gw: RunningGateway, clock: ManualClock) -> None:
    task_id, native_url = await native_job(gw)
    mm_id = await modelmux_job(gw)
    oa_url = await openai_url(gw)
    image = f"{gw.url}/api/v1/generations/{mm_id}/image"
    for url in (native_url, oa_url, image):
        status, _, kind = await get(gw, url)
        assert (status, kind) == (200, "image/png")
    assert len(blobs(gw, "results")) == 3

    await next_sweep(gw, clock, 1.5 * DAY)  # not expired yet
    assert len(blobs(gw, "results")) == 3
    status, _, _ = await get(gw, native_url)
    assert status == 200

    await next_sweep(gw, clock, 0.5 * DAY)
    assert blobs(gw, "results") == []
    fresh = (await gw.task(task_id))["resultUrls"][0]  # a link signed after the sweep
    for url in (native_url, oa_url, fresh):
        status, body, _ = await get(gw, url)
        assert status == 404
        assert body == {"code": 404, "msg": "file not found", "data": None}
    status, body, _ = await get(gw, image)
    assert status == 404
    assert body["code"] == "expired" and set(body) == {"error", "code"}

    # A job that ended since is kept.
    _, recent = await native_job(gw)
    await next_sweep(gw, clock, 600)
    status, _, _ = await get(gw, recent)
    assert status == 200


async def test_an_expired_download_answers_404_before_the_sweep_has_run(
        gw: RunningGateway, clock: ManualClock) -> None:
    mm_id = await modelmux_job(gw)
    await gw.state.retention.stop()  # expiry is a matter of time, not of the sweep
    clock.advance(2 * DAY)
    assert len(blobs(gw, "results")) == 1
    status, body, _ = await get(gw, f"{gw.url}/api/v1/generations/{mm_id}/image")
    assert status == 404
    assert body["code"] == "expired"
    async with gw.http.post(gw.url + "/v1/images/generations", headers=gw.headers(),
                            json={"model": "demo-image", "prompt": PROMPT,
                                  "response_format": "b64_json"}) as resp:
        assert resp.status == 200  # a fresh job is not expired
        b64 = (await resp.json())["data"][0]["b64_json"]
    assert base64.b64decode(b64).startswith(b"\x89PNG")


async def test_retention_zero_keeps_results_forever(
        forever: RunningGateway, clock: ManualClock) -> None:
    task_id, url = await native_job(forever)
    mm_id = await modelmux_job(forever)
    await next_sweep(forever, clock, 3650 * DAY)
    assert len(blobs(forever, "results")) == 2
    status, _, kind = await get(forever, url)
    assert (status, kind) == (200, "image/png")
    status, _, kind = await get(forever, f"{forever.url}/api/v1/generations/{mm_id}/image")
    assert (status, kind) == (200, "image/png")
    assert (await forever.task(task_id))["state"] == "completed"


@pytest.mark.parametrize("days", [0, 2])
async def test_inputs_left_by_ended_jobs_are_swept(
        config: dict[str, Any], clock: ManualClock, days: float) -> None:
    async for gw in gateway_with(config, clock, days):
        upload = base64.b64encode(png_bytes()).decode()
        await native_job(gw, image_base64=upload)
        await next_sweep(gw, clock, 600)
        assert blobs(gw, "inputs") == []
        assert len(blobs(gw, "results")) == 1


async def test_a_failing_sweep_is_logged_and_the_next_one_finishes_the_work(
        config: dict[str, Any], clock: ManualClock) -> None:
    faulty = merge(config, {"database": {"busy_timeout_seconds": 0.2}})
    async for gw in gateway_with(faulty, clock, 2):
        task_id, _ = await native_job(gw)
        db = gw.settings.database.url.removeprefix("sqlite:///")
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # the sweep cannot record what it did
            await next_sweep(gw, clock, 3 * DAY)
            other.execute("ROLLBACK")
            assert swept(other, task_id) == 0
        finally:
            other.close()
        await next_sweep(gw, clock, 600)  # the loop lives on, and finishes the job
        assert blobs(gw, "results") == []
        with closing(sqlite3.connect(db)) as check:
            assert swept(check, task_id) == 2


def swept(db: sqlite3.Connection, job_id: str) -> int:
    level: int = db.execute("SELECT swept FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    return level


async def test_jobs_that_fail_to_sweep_do_not_hide_the_ones_behind_them(
        gw: RunningGateway, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)
    ids = []
    for _ in range(3):
        ids.append((await native_job(gw))[0])
        clock.advance(1)  # each ends later than the one before
    jobs = [await gw.state.store.get_job(job_id) for job_id in ids]
    keys = [job.result.images[0].key for job in jobs if job is not None and job.result]
    failing, attempts = set(keys[:2]), collections.Counter[str]()
    delete = gw.state.storage.delete

    async def flaky_delete(key: str) -> None:
        attempts[key] += 1
        if key in failing:
            raise OSError("storage is down for this blob")
        await delete(key)

    monkeypatch.setattr(gw.state.storage, "delete", flaky_delete)
    await next_sweep(gw, clock, 2 * DAY)  # a full batch of failures, then a good job
    assert [attempts[key] for key in keys] == [1, 1, 1]
    assert {p.name for p in blobs(gw, "results")} == {Path(k).name for k in keys[:2]}
    failing.clear()
    await next_sweep(gw, clock, 600)  # the failed ones are tried again
    assert [attempts[key] for key in keys] == [2, 2, 1]
    assert blobs(gw, "results") == []
