"""Scenario 5 (``pg-workers``): each backend, SQLite and PostgreSQL, with one worker
process and then two (``serve --workers 2``), in the same run: native submit and
poll rates at c=64 and the OpenAI-surface rate at c=32, with the ratios two workers
against one on each backend and PostgreSQL against SQLite.

Each PostgreSQL gateway gets a fresh database of its own, made as scenario 6 makes
its (:func:`bench.replicas.postgres_database`, on the server of
``MUXPROXY_BENCH_POSTGRES_URL``) and dropped afterwards. Without a server the
scenario reports why and measures nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench.loadgen import encode
from bench.replicas import ADMIN_URL, postgres_database
from bench.scenarios import HOST, OPENAI_BODY, NativeRates, Scale, _has_image, _rounds
from bench.services import BENCH_KEY, Service, busy_share, machine_cpu, start_gateway

# (name, backend, workers), measured in this order.
VARIANTS = (("sqlite, 1 worker", "sqlite", 1), ("sqlite, 2 workers", "sqlite", 2),
            ("postgres, 1 worker", "postgres", 1), ("postgres, 2 workers", "postgres", 2))


class PgNativeRates(NativeRates):
    """Scenario 2's rates on a gateway whose jobs are in PostgreSQL."""

    def __init__(self, port: int, gateway: Service, url: str) -> None:
        super().__init__(port, gateway, Path("/nonexistent"))
        self.url = url

    async def wait_drained(self) -> float:
        import asyncpg

        started = time.perf_counter()
        conn = await asyncpg.connect(self.url)
        try:
            while time.perf_counter() - started < 120:
                active = await conn.fetchval(
                    "SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'processing')")
                if active == 0:
                    return time.perf_counter() - started
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
        raise RuntimeError("jobs still running after 120 s")


async def _measure(folder: Path, fake_port: int, scale: Scale, url: str | None,
                   workers: int) -> dict[str, Any]:
    os.mkdir(folder)
    env = {} if url is None else {"MUXPROXY_DATABASE_URL": url}
    gateway, port = await start_gateway(folder, fake_port, env=env, workers=workers)
    try:
        rates = (PgNativeRates(port, gateway, url) if url is not None
                 else NativeRates(port, gateway, folder / "data" / "muxproxy.db"))
        await rates.warm_up()
        cpu = machine_cpu()
        for _ in range(scale.rounds):
            await rates.submit_round(scale.submits)
        for _ in range(scale.rounds):
            await rates.poll_round(scale.polls)
        raw = encode("POST", HOST, port, "/v1/images/generations",
                     {"Authorization": f"Bearer {BENCH_KEY}"}, OPENAI_BODY)
        openai = await _rounds(port, raw, scale.rate_requests, 32, scale.rounds, _has_image)
        busy = busy_share(cpu, machine_cpu())
        figures = rates.figures()
        figures.update(openai_rps=openai["rps"], openai_p99_ms=openai["p99_ms"],
                       openai_errors=openai["errors"], workers=len(gateway.children()) or 1,
                       cpu_busy=busy)
        figures["first_error"] = figures["first_error"] or openai["first_error"]
        return figures
    finally:
        gateway.stop()


async def pg_workers(workdir: Path, fake_port: int, scale: Scale) -> dict[str, Any]:
    try:
        import asyncpg

        conn = await asyncpg.connect(ADMIN_URL, timeout=5)
        await conn.close()
    except Exception as exc:
        print(f"  PostgreSQL unavailable ({type(exc).__name__}: {exc}); set "
              f"MUXPROXY_BENCH_POSTGRES_URL", flush=True)
        return {"error": f"PostgreSQL at {ADMIN_URL}: {type(exc).__name__}: {exc}"}
    results: dict[str, Any] = {}
    for name, backend, workers in VARIANTS:
        folder = workdir / f"pg-workers-{backend}-{workers}"
        if backend == "sqlite":
            results[name] = await _measure(folder, fake_port, scale, None, workers)
        else:
            async with postgres_database() as url:
                results[name] = await _measure(folder, fake_port, scale, url, workers)
        r = results[name]
        print(f"  {name:<20} submit {r['submit_rps']:.0f}/s, poll {r['poll_rps']:.0f}/s, "
              f"openai {r['openai_rps']:.0f}/s", flush=True)
    results["ratios"] = ratios(results)
    return results


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    keys = {"submit": "submit_rps", "poll": "poll_rps", "openai": "openai_rps"}

    def ratio(a: str, b: str) -> dict[str, float]:
        return {k: results[a][v] / results[b][v] for k, v in keys.items()}

    return {"2 workers / 1 (postgres)": ratio("postgres, 2 workers", "postgres, 1 worker"),
            "2 workers / 1 (sqlite)": ratio("sqlite, 2 workers", "sqlite, 1 worker"),
            "postgres / sqlite (1 worker)": ratio("postgres, 1 worker", "sqlite, 1 worker")}
