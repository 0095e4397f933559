"""Figures for "one tenant cannot degrade the others" (issue 14, point 5):

- a /metrics scrape with 500,000 stored jobs (median of 10);
- key checks (requests that look their key up) alone and while 20 clients scrape;
- how long key B's callback takes while key A's deliveries go to six receivers
  that accept and never answer (24 of them, the default 10 s attempt timeout).

``python bench/tenants.py [--jobs N]``. The gateway runs in this process (uvicorn on
loopback, a real SQLite file in a temp folder), as in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.bulk import fill_jobs  # noqa: E402
from tests.support.gateway import (  # noqa: E402
    KEY_A,
    KEY_B,
    RunningGateway,
    base_config,
    merge,
    run_gateway,
)
from tests.support.webhooks import LOOPBACK, Receiver, SilentReceiver, until  # noqa: E402

SCRAPERS = 20


async def scrape(gateway: RunningGateway) -> float:
    started = time.perf_counter()
    async with gateway.http.get(f"{gateway.url}/metrics") as resp:
        await resp.read()
    return time.perf_counter() - started


async def key_checks(gateway: RunningGateway, count: int) -> list[float]:
    took = []
    for i in range(count):
        key = KEY_A if i % 2 else f"unknown-key-{i:06d}"
        started = time.perf_counter()
        async with gateway.http.get(f"{gateway.url}/api/v1/webhooks/secret",
                                    headers=gateway.headers(key)) as resp:
            await resp.read()
        took.append(time.perf_counter() - started)
    return took


async def crowded_key_checks(gateway: RunningGateway, count: int) -> list[float]:
    stop = asyncio.Event()

    async def scraper() -> None:
        while not stop.is_set():
            await scrape(gateway)

    tasks = [asyncio.create_task(scraper()) for _ in range(SCRAPERS)]
    try:
        await asyncio.gather(*(scrape(gateway) for _ in range(SCRAPERS)))
        return await key_checks(gateway, count)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def metrics_figures(folder: Path, jobs: int, checks: int) -> dict[str, float]:
    db = folder / "big.db"
    fill_jobs(db, jobs)
    config = merge(base_config(folder), {"database": {"url": f"sqlite:///{db}"}})
    async with run_gateway(config) as gateway:
        gateway.state.auth.cache_seconds = 0  # every request looks its key up
        await scrape(gateway)
        scrapes = [await scrape(gateway) for _ in range(10)]
        await key_checks(gateway, 10)
        alone = await key_checks(gateway, checks)
        crowded = await crowded_key_checks(gateway, checks)
    return {"scrape_ms": statistics.median(scrapes) * 1000,
            "key_check_alone_ms": statistics.median(alone) * 1000,
            "key_check_crowded_ms": statistics.median(crowded) * 1000}


async def callback_figure(folder: Path) -> float:
    """Seconds from key B's submit to its callback's arrival (capped at 20)."""
    config: dict[str, Any] = merge(base_config(folder / "hooks"), LOOPBACK)
    async with AsyncExitStack() as stack:
        silent = [await stack.enter_async_context(SilentReceiver()) for _ in range(6)]
        receiver = await stack.enter_async_context(Receiver())
        gateway = await stack.enter_async_context(run_gateway(config))
        for receiver_a in silent:  # run first on the way out: attempts end at once
            stack.callback(receiver_a.hang_up)
        tasks = [await gateway.submit({"model": "demo-image", "prompt": "x",
                                       "callback_url": silent[i % 6].url()})
                 for i in range(24)]
        for task_id in tasks:
            await gateway.wait_terminal(task_id)
        await until(lambda: sum(s.accepted for s in silent) >= 4)
        started = time.monotonic()
        await gateway.submit({"model": "demo-image", "prompt": "x",
                              "callback_url": receiver.url()}, key=KEY_B)
        try:
            await receiver.wait_hits(1, timeout=20.0)
        except AssertionError:
            return 20.0
        return time.monotonic() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500_000)
    parser.add_argument("--checks", type=int, default=50,
                        help="key checks measured alone and under scrapers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        figures = await metrics_figures(folder, args.jobs, args.checks)
        figures["key_b_callback_s"] = await callback_figure(folder)
    print(f"scrape at {args.jobs} jobs:          {figures['scrape_ms']:.1f} ms (median of 10)")
    print(f"key check alone:               {figures['key_check_alone_ms']:.1f} ms (median)")
    print(f"key check, {SCRAPERS} scrapers looping: "
          f"{figures['key_check_crowded_ms']:.1f} ms (median)")
    print(f"key B's callback, 6 silent receivers of key A: {figures['key_b_callback_s']:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
