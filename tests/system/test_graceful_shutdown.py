"""SIGTERM: the gateway stops claiming work at once, lets the requests in flight
finish within its grace period (an OpenAI request whose job is running, a slow
download), answers the ones whose job cannot finish in time with the job id, and
leaves every other job to the next start, which finishes each exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from muxproxy.clock import SystemClock
from muxproxy.signing import UrlSigner
from tests.fakes.chaos import CHAOS_KEY, ChaosUpstream
from tests.support.audit import billing_problems, jobs
from tests.support.gateway import KEY_A
from tests.support.process import GatewayProcess, free_port
from tests.support.wait import eventually

SECRET = "graceful-test-secret-0123"
GRACE = 4.0
BIG = 16 * 1024 * 1024
HEADERS = {"Authorization": f"Bearer {KEY_A}"}


def write_config(path: Path, fake: str) -> Path:
    path.write_text(f"""
[server]
port = "${{MUXPROXY_PORT}}"
public_url = "${{MUXPROXY_PUBLIC_URL}}"
secret = "{SECRET}"
graceful_shutdown_seconds = {GRACE}
[database]
url = "sqlite:///state/jobs.db"
[storage]
url = "file://state/images"
[logging]
level = "info"
[[keys]]
name = "alpha"
key = "{KEY_A}"
credits = 1000
[providers.slow]
kind = "openai-compatible"
base_url = "{fake}/v1"
api_key = "{CHAOS_KEY}"
max_concurrency = 1
[models."slow"]
routes = [{{ provider = "slow", model = "held-model" }}]
credits = 2
""")
    return path


async def openai_request(http: aiohttp.ClientSession, url: str, tag: str
                         ) -> tuple[int, str | None, dict[str, Any], float]:
    async with http.post(f"{url}/v1/images/generations", headers=HEADERS,
                         json={"model": "slow", "prompt": f"#{tag} a harbour",
                               "response_format": "b64_json"}) as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, resp.headers.get("x-muxproxy-job-id"), body, time.monotonic()


async def slow_download(http: aiohttp.ClientSession, url: str) -> int:
    """Read the file at ~8 MB/s, so the server is still sending when the signal comes."""
    received = 0
    async with http.get(url) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(256 * 1024):
            received += len(chunk)
            await asyncio.sleep(0.03)
    return received


async def jobs_in(db: Path, keep: Callable[[dict[str, Any]], bool], wanted: int) -> bool:
    return sum(keep(r) for r in await jobs(db)) == wanted


async def test_sigterm_drains_in_flight_requests_and_starts_nothing_new(tmp_path: Path) -> None:
    db = tmp_path / "state" / "jobs.db"
    big = tmp_path / "state" / "images" / "results" / "big" / "0.png"
    big.parent.mkdir(parents=True)
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(BIG - 8))
    port = free_port()
    async with ChaosUpstream(hold_sync={"held-model"}) as fake, \
            aiohttp.ClientSession() as http:
        config = write_config(tmp_path / "config.toml", fake.url)
        gw = GatewayProcess(config, port, tmp_path / "gateway.log")
        try:
            await gw.start()
            # The one slot runs the first OpenAI request's job; the upstream holds it.
            first = asyncio.create_task(openai_request(http, gw.url, "first"))
            await eventually(lambda: fake.waiting == 1)
            second = asyncio.create_task(openai_request(http, gw.url, "second"))
            for i in range(3):
                async with http.post(f"{gw.url}/api/v1/images/generations", headers=HEADERS,
                                     json={"model": "slow", "prompt": f"#native{i} a pier"}
                                     ) as resp:
                    assert resp.status == 200
            await eventually(lambda: jobs_in(db, lambda r: True, 5))
            signer = UrlSigner(SECRET, gw.url, 3600, SystemClock())
            download = asyncio.create_task(slow_download(http, signer.url("results/big/0.png")))
            await asyncio.sleep(0.2)

            signalled = time.monotonic()
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            fake.release_sync()  # the running job finishes inside the grace period

            status, job1, body, _ = await first
            assert status == 200, body  # finished normally: its step was running
            assert job1 is not None and body["data"][0]["b64_json"]
            status, job2, body, answered = await second
            # Its job was waiting for the slot: nothing starts it before the
            # restart, so the request is answered at once, naming the job.
            assert status == 504 and job2 is not None, body
            assert "restarting" in body["error"]["message"] and job2 in body["error"]["message"]
            assert answered - signalled < 1.5
            assert await download == BIG  # the slow download ran to its end
            assert await gw.wait() in (0, -signal.SIGTERM)
            assert time.monotonic() - signalled < GRACE + 1.5
        finally:
            if gw.proc is not None and gw.proc.returncode is None:
                await gw.kill()
        log = (tmp_path / "gateway.log").read_text()
        assert "graceful shutdown exceeded" not in log  # no connection was cut off
        # The slot freed by the first job during the drain was not given to another.
        assert set(fake.sync_started) == {"first"}
        left = [r for r in await jobs(db) if r["state"] != "completed"]
        assert len(left) == 4
        assert all(r["state"] == "pending" and r["lease_owner"] is None for r in left)

        gw = GatewayProcess(config, port, tmp_path / "gateway.log")
        try:
            await gw.start()
            await eventually(lambda: jobs_in(db, lambda r: r["state"] == "completed", 5))
            async with http.get(f"{gw.url}/api/v1/images/generations", headers=HEADERS,
                                params={"task_id": job2}) as resp:
                assert (await resp.json())["data"]["state"] == "completed"
            await gw.terminate()
        finally:
            if gw.proc is not None and gw.proc.returncode is None:
                await gw.kill()
    # Each job reached the upstream exactly once, across the stop and the restart.
    assert sorted(fake.sync_started.values()) == [1] * 5
    assert await billing_problems(db) == []
