"""A replica that starts beside a running one never takes the jobs the running one
renews: its start and its sweeps take lapsed leases only. Once the running one is
killed, its lease lapses and the other takes the job over."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.support.gateway import KEY_A
from tests.support.process import GatewayProcess, free_port
from tests.support.wait import eventually

LEASE_SECONDS = 4  # the provider's 2 s timeout plus the 2 s margin


def config(path: Path, db_url: str, images: Path, delay: float) -> Path:
    path.write_text(f"""
[server]
port = "${{MUXPROXY_PORT}}"
public_url = "${{MUXPROXY_PUBLIC_URL}}"
secret = "live-lease-secret-0123456"
graceful_shutdown_seconds = 1
[database]
url = "{db_url}"
pool_size = 2
[storage]
url = "file://{images}"
[jobs]
lease_margin_seconds = 2
[logging]
level = "warning"
[[keys]]
name = "alpha"
key = "{KEY_A}"
[providers.slow]
kind = "demo"
timeout_seconds = 2
options = {{ delay_seconds = {delay} }}
[models."sync"]
routes = [{{ provider = "slow", model = "demo-sync" }}]
""")
    return path


def pid_of(owner: str | None) -> int | None:
    return int(owner.split(":")[1]) if owner else None


async def test_a_live_replica_keeps_its_job_until_it_dies(tmp_path: Path,
                                                          postgres_url: str) -> None:
    images = tmp_path / "images"
    # The first replica's step takes a minute; the second one's would end at once.
    first = GatewayProcess(config(tmp_path / "a.toml", postgres_url, images, 60), free_port())
    second = GatewayProcess(config(tmp_path / "b.toml", postgres_url, images, 0), free_port())
    db = await asyncpg.connect(postgres_url)

    async def row(job_id: str) -> dict[str, Any]:
        found = await db.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        assert found is not None
        return dict(found)

    try:
        await first.start()
        async with aiohttp.ClientSession() as http, http.post(
                f"{first.url}/api/v1/images/generations",
                headers={"Authorization": f"Bearer {KEY_A}"},
                json={"model": "sync", "prompt": "a long one"}) as resp:
            assert resp.status == 200
            job_id = (await resp.json())["data"]["taskId"]

        async def running_on_first() -> bool:
            found = await row(job_id)
            return found["state"] == "processing" and pid_of(found["lease_owner"]) == first.pid

        await eventually(running_on_first)
        await second.start()  # its start recovers lapsed leases only
        # For two leases' length the first replica renews its lease and the second,
        # sweeping every second, leaves the job alone.
        leases = set()
        until = time.monotonic() + 2 * LEASE_SECONDS
        while time.monotonic() < until:
            found = await row(job_id)
            assert pid_of(found["lease_owner"]) == first.pid, found
            assert found["recoveries"] == 0 and found["state"] == "processing"
            leases.add(found["lease_until"])
            await asyncio.sleep(0.2)  # watching that nothing happens: polled, not awaited
        assert len(leases) > 1  # renewed

        await first.kill()

        async def finished() -> bool:
            return bool((await row(job_id))["state"] == "completed")

        await eventually(finished, timeout=LEASE_SECONDS + 10)
        done = await row(job_id)
        # Taken over by the second replica's recovery: the cut-off call is counted.
        assert done["recoveries"] == 1 and done["lease_owner"] is None
    finally:
        for replica in (first, second):
            if replica.proc is not None and replica.proc.returncode is None:
                await replica.kill()
        await db.close()
