"""Crash recovery: a real gateway process killed with SIGKILL mid-job, restarted on
the same database (SQLite or PostgreSQL), finishes every job."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.audit import Database, job
from tests.support.databases import TestDatabase
from tests.support.gateway import KEY_A
from tests.support.process import free_port, gateway_process
from tests.support.wait import eventually

HEADERS = {"Authorization": f"Bearer {KEY_A}"}


def write_config(path: Path, delay: float, url: str = "sqlite:///state/jobs.db") -> Path:
    path.write_text(f"""
[server]
port = "${{MUXPROXY_PORT}}"
public_url = "${{MUXPROXY_PUBLIC_URL}}"
secret = "restart-test-secret-0123"
graceful_shutdown_seconds = 1
[database]
url = "{url}"
[storage]
url = "file://state/images"
[jobs]
poll_initial_seconds = 0.05
poll_cap_seconds = 0.1
# A crashed process's leases lapse within seconds (timeout + margin), and only then
# does the next start take its jobs over.
lease_margin_seconds = 2
[logging]
level = "warning"
[[keys]]
name = "alpha"
key = "{KEY_A}"
[providers.slow]
kind = "demo"
max_concurrency = 1
timeout_seconds = 2
options = {{ delay_seconds = {delay} }}
[providers.slowq]
kind = "demo"
timeout_seconds = 2
options = {{ delay_seconds = {delay}, async = true }}
[models."sync"]
routes = [{{ provider = "slow", model = "demo-sync" }}]
[models."queued"]
routes = [{{ provider = "slowq", model = "demo-queued" }}]
""")
    return path


async def row(db: Database, task_id: str) -> dict[str, Any]:
    return await job(db, task_id)


async def processing(db: Database, task_id: str) -> bool:
    return bool((await row(db, task_id))["state"] == "processing")


async def submit(http: aiohttp.ClientSession, url: str, model: str) -> str:
    async with http.post(f"{url}/api/v1/images/generations", headers=HEADERS,
                         json={"model": model, "prompt": f"survives a crash ({model})",
                               "size": "256x256"}) as resp:
        assert resp.status == 200
        task_id: str = (await resp.json())["data"]["taskId"]
        return task_id


async def wait_terminal(http: aiohttp.ClientSession, url: str, task_id: str
                        ) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            async with http.get(f"{url}/api/v1/images/generations",
                                params={"task_id": task_id}, headers=HEADERS) as resp:
                data: dict[str, Any] = (await resp.json())["data"]
            if data["state"] in ("completed", "failed"):
                return data
            await asyncio.sleep(0.05)


async def test_jobs_left_processing_by_a_crash_complete_after_restart(
        tmp_path: Path, database: TestDatabase) -> None:
    slow = write_config(tmp_path / "slow.toml", delay=60, url=database.url)
    fast = write_config(tmp_path / "fast.toml", delay=0, url=database.url)
    db = database.audit
    port = free_port()
    async with aiohttp.ClientSession() as http:
        async with gateway_process(slow, port) as gw:
            sync_job = await submit(http, gw.url, "sync")
            queued_job = await submit(http, gw.url, "queued")
            waiting_job = await submit(http, gw.url, "sync")  # the one slot is taken
            async def started() -> bool:
                return (await row(db, sync_job))["state"] == "processing" \
                    and (await row(db, queued_job))["upstream_id"] is not None

            await eventually(started)
            await gw.kill()
        assert (await row(db, sync_job))["lease_owner"] is not None
        assert (await row(db, waiting_job))["state"] == "pending"

        async with gateway_process(fast, port) as gw:
            results = {t: await wait_terminal(http, gw.url, t)
                       for t in (sync_job, queued_job, waiting_job)}
            for task in results.values():
                assert task["state"] == "completed", task
                async with http.get(task["resultUrls"][0]) as resp:
                    assert resp.status == 200
                    assert (await resp.read()).startswith(b"\x89PNG")
    # The async job resumed polling its upstream id instead of starting over;
    # the sync one, cut off mid-call, was retried once.
    queued = await row(db, queued_job)
    assert queued["upstream_id"] == f"demo-{queued_job}"
    assert queued["recoveries"] == 0
    assert (await row(db, sync_job))["recoveries"] == 1
    assert (await row(db, waiting_job))["recoveries"] == 0


async def test_a_job_interrupted_twice_fails_instead_of_looping(
        tmp_path: Path, database: TestDatabase) -> None:
    slow = write_config(tmp_path / "slow.toml", delay=60, url=database.url)
    fast = write_config(tmp_path / "fast.toml", delay=0, url=database.url)
    db = database.audit
    port = free_port()
    async with aiohttp.ClientSession() as http:
        async with gateway_process(slow, port) as gw:
            task_id = await submit(http, gw.url, "sync")
            await eventually(lambda: processing(db, task_id))
            await gw.kill()
        async with gateway_process(slow, port) as gw:
            # Recovered once, and being worked on again when the second crash hits.
            async def taken_again() -> bool:
                found = await row(db, task_id)
                return found["recoveries"] == 1 and found["lease_owner"] is not None

            await eventually(taken_again)
            await gw.kill()
        async with gateway_process(fast, port) as gw:
            task = await wait_terminal(http, gw.url, task_id)
    assert task["state"] == "failed"
    assert task["failCode"] == "interrupted"
    assert "restarted" in task["failMsg"]


async def test_sigterm_hands_running_jobs_back(tmp_path: Path, database: TestDatabase) -> None:
    slow = write_config(tmp_path / "slow.toml", delay=60, url=database.url)
    fast = write_config(tmp_path / "fast.toml", delay=0, url=database.url)
    db = database.audit
    port = free_port()
    async with aiohttp.ClientSession() as http:
        async with gateway_process(slow, port) as gw:
            task_id = await submit(http, gw.url, "sync")
            await eventually(lambda: processing(db, task_id))
            # uvicorn shuts down gracefully, then re-raises SIGTERM as its exit.
            assert await gw.terminate() in (0, -15)
        stopped = await row(db, task_id)
        assert stopped["state"] == "processing"
        assert stopped["lease_owner"] is None
        async with gateway_process(fast, port) as gw:
            task = await wait_terminal(http, gw.url, task_id)
    assert task["state"] == "completed"
    assert (await row(db, task_id))["recoveries"] == 0
