"""Scenario 6: three replicas on one PostgreSQL database under steady load, one of
them killed (SIGKILL) part-way through.

The load is OpenAI-surface calls (each one a whole job: stored, run, its image
written, answered) spread over the replicas, as a load balancer would; a client
whose replica stops answering moves to the next one that does. Reported: the rate
before the kill, the lowest rate after it, how long until the rate is back to
steady, and jobs lost: jobs the database still holds unfinished once the dead
replica's leases have lapsed and the survivors have taken them over (must be 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.loadgen import Connection, HTTPError, encode
from bench.services import BENCH_KEY, Service, replace_once, start_gateway

HOST = "127.0.0.1"
ADMIN_URL = os.environ.get("MUXPROXY_BENCH_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
BODY = {"model": "bench-image", "prompt": "a red fox in the snow", "size": "1024x1024",
        "response_format": "b64_json"}
BUCKET_S = 0.5
# A killed replica's jobs are taken over once their leases lapse: the fake
# upstream's timeout plus the margin, shortened here from the shipped 120 + 30 s.
UPSTREAM_TIMEOUT_S = 10
LEASE_MARGIN_S = 2


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new database on the server at MUXPROXY_BENCH_POSTGRES_URL, dropped after."""
    import asyncpg

    name = f"muxbench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def short_leases(config: str) -> str:
    config = replace_once(config, "timeout_seconds = 120\nmax_concurrency = 64",
                      f"timeout_seconds = {UPSTREAM_TIMEOUT_S}\nmax_concurrency = 64")
    return replace_once(config, "lease_margin_seconds = 30.0",
                    f"lease_margin_seconds = {float(LEASE_MARGIN_S)}")


class Balancer:
    """Closed-loop clients over several replicas; a client whose replica fails
    moves to the next one. Completions are counted per time bucket."""

    def __init__(self, ports: list[int], concurrency: int) -> None:
        self.ports = ports
        self.down: set[int] = set()
        self.concurrency = concurrency
        self.raw = {port: encode("POST", HOST, port, "/v1/images/generations",
                                 {"Authorization": f"Bearer {BENCH_KEY}"}, BODY)
                    for port in ports}
        self.done: list[float] = []
        self.failed = 0
        self.started = 0.0

    async def _client(self, index: int, until: float) -> None:
        port = self.ports[index % len(self.ports)]
        conn: Connection | None = None
        while time.perf_counter() < until:
            try:
                if conn is None:
                    conn = await Connection.open(HOST, port)
                status, _ = await conn.request(self.raw[port])
                if status == 200:
                    self.done.append(time.perf_counter() - self.started)
                else:
                    self.failed += 1
            except (OSError, HTTPError):
                self.failed += 1
                self.down.add(port)
                if conn is not None:
                    conn.close()
                conn = None
                live = [p for p in self.ports if p not in self.down] or self.ports
                port = live[index % len(live)]
        if conn is not None:
            conn.close()

    async def run(self, seconds: float, kill_at: float, victim: Service) -> None:
        self.started = time.perf_counter()
        until = self.started + seconds

        async def kill() -> None:
            await asyncio.sleep(kill_at)
            os.kill(victim.proc.pid, signal.SIGKILL)

        killer = asyncio.create_task(kill())
        await asyncio.gather(*(self._client(i, until) for i in range(self.concurrency)))
        await killer

    def rates(self, seconds: float) -> list[float]:
        buckets = [0] * int(seconds / BUCKET_S)
        for t in self.done:
            if int(t / BUCKET_S) < len(buckets):
                buckets[int(t / BUCKET_S)] += 1
        return [n / BUCKET_S for n in buckets]


async def unfinished_jobs(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE state IN ('pending', 'processing')")
        return count
    finally:
        await conn.close()


async def settle(url: str, timeout: float) -> tuple[int, float]:
    """(jobs still unfinished, seconds waited) once none is, or at ``timeout``."""
    started = time.perf_counter()
    while True:
        left = await unfinished_jobs(url)
        waited = time.perf_counter() - started
        if left == 0 or waited >= timeout:
            return left, waited
        await asyncio.sleep(0.5)


async def replica_failover(work: Path, fake_port: int, *, seconds: float = 16.0,
                           kill_at: float = 6.0, concurrency: int = 24) -> dict[str, Any]:
    env = {"MUXPROXY_STORAGE_URL": f"file://{work / 'images'}"}
    async with postgres_database() as url:
        env["MUXPROXY_DATABASE_URL"] = url
        replicas: list[tuple[Service, int]] = []
        try:
            for i in range(3):
                folder = work / f"replica{i}"
                folder.mkdir()
                replicas.append(await start_gateway(folder, fake_port, tweak=short_leases,
                                                    env=env))
            balancer = Balancer([port for _, port in replicas], concurrency)
            await balancer.run(seconds, kill_at, replicas[0][0])
            # The dead replica's jobs: the survivors take them over once their
            # leases lapse.
            lost, settled_s = await settle(url, UPSTREAM_TIMEOUT_S + LEASE_MARGIN_S + 30)
        finally:
            for service, _ in replicas:
                service.stop()
    rates = balancer.rates(seconds)
    kill_bucket = int(kill_at / BUCKET_S)
    steady = statistics.median(rates[2:kill_bucket])  # the first second warms up
    after = rates[kill_bucket:]
    back = next((i * BUCKET_S for i, rate in enumerate(after) if i and rate >= 0.9 * steady),
                None)
    print(f"  steady {steady:.0f} req/s, lowest after the kill {min(after):.0f}, back to "
          f"steady after {back if back is not None else '-'} s, jobs lost {lost} "
          f"(settled in {settled_s:.1f} s)", flush=True)
    return {"steady_rps": steady, "lowest_rps_after_kill": min(after),
            "dip": 1 - min(after) / steady if steady else None,
            "back_to_steady_s": back, "requests_failed": balancer.failed,
            "completed": len(balancer.done), "settled_s": round(settled_s, 1),
            "jobs_lost": lost, "rates": rates}
