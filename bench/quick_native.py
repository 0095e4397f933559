"""Quick figures for the native task API: POST-to-completed latency of a demo job
with zero delay, and the submit rate. ``python bench/quick_native.py``

Starts the gateway as its own process on the shipped defaults (in a temp folder)
and drives it from this process over loopback.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.process import GatewayProcess, free_port  # noqa: E402

KEY = "mux-dev-key-change-me"
HEADERS = {"Authorization": f"Bearer {KEY}"}
BODY = {"model": "demo-image", "prompt": "a red fox", "size": "256x256"}


async def latency(http: aiohttp.ClientSession, url: str, rounds: int = 30) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        async with http.post(f"{url}/api/v1/images/generations", json=BODY,
                             headers=HEADERS) as resp:
            task_id = (await resp.json())["data"]["taskId"]
        while True:
            async with http.get(f"{url}/api/v1/images/generations",
                                params={"task_id": task_id}, headers=HEADERS) as resp:
                state = (await resp.json())["data"]["state"]
            if state == "completed":
                break
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def submit_rate(http: aiohttp.ClientSession, url: str, total: int,
                      concurrency: int) -> float:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with http.post(f"{url}/api/v1/images/generations", json=BODY,
                                 headers=HEADERS) as resp:
                assert resp.status == 200
                await resp.read()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text((ROOT / "config.toml").read_text().replace(
            'level = "${MUXPROXY_LOG_LEVEL:-info}"', 'level = "warning"'))
        gateway = GatewayProcess(config, free_port())
        await gateway.start()
        try:
            connector = aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(connector=connector) as http:
                samples = await latency(http, gateway.url)
                print(f"POST -> completed (demo, zero delay, 256x256): "
                      f"median {statistics.median(samples):.1f} ms, "
                      f"min {min(samples):.1f} ms over {len(samples)} jobs")
                rate = await submit_rate(http, gateway.url, total=3000, concurrency=32)
                print(f"submit rate, concurrency 32, 3000 jobs: {rate:.0f} req/s "
                      f"(jobs also rendering on the same 2 cores)")
        finally:
            await gateway.terminate()


if __name__ == "__main__":
    asyncio.run(main())
