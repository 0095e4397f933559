"""The four scenarios. Each returns plain dicts of figures (medians over rounds);
``run.py`` prints and saves them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from bench.loadgen import Run, drive, encode, median
from bench.peers import LITELLM_KEY, portkey_headers
from bench.services import (
    BENCH_KEY,
    Service,
    busy_share,
    free_port,
    machine_cpu,
    start_gateway,
)

HOST = "127.0.0.1"
OPENAI_BODY = {"model": "bench-image", "prompt": "a red fox in the snow", "size": "1024x1024",
               "response_format": "b64_json"}
NATIVE_PATH = "/api/v1/images/generations"
# serve --workers for the rows and scenarios that measure the gateway at its best on
# this machine: one process per core.
WORKERS = 2


@dataclass(frozen=True)
class Scale:
    """How much work each scenario does (``--quick`` shrinks it)."""

    rounds: int = 3
    latency_requests: int = 400      # per round at concurrency 1
    rate_requests: int = 3000        # per round at concurrency 32
    litellm_divisor: int = 5         # LiteLLM is slower: fewer requests, same rounds
    submits: int = 4000              # per round, scenario 2 and 4
    polls: int = 10000               # per round, scenario 2 and 4
    jobs: int = 10000                # scenario 3
    sizes: tuple[int, ...] = (1000, 100000)


QUICK = Scale(rounds=2, latency_requests=100, rate_requests=600, submits=800, polls=2000,
              jobs=1000, sizes=(1000, 20000))


def _summary(runs: list[Run]) -> dict[str, Any]:
    return {
        "p50_ms": median([r.percentile(0.50) * 1000 for r in runs]),
        "p99_ms": median([r.percentile(0.99) * 1000 for r in runs]),
        "rps": median([r.rate for r in runs]),
        "requests": sum(len(r.latencies) for r in runs),
        "errors": sum(r.errors for r in runs),
        "first_error": next((r.first_error for r in runs if r.first_error), None),
    }


async def _rounds(port: int, raw: bytes, total: int, concurrency: int, rounds: int,
                  ok: Any = None) -> dict[str, Any]:
    await drive(HOST, port, lambda _: raw, max(200, total // 10), concurrency, ok=ok)  # warm-up
    runs = [await drive(HOST, port, lambda _: raw, total, concurrency, ok=ok)
            for _ in range(rounds)]
    return _summary(runs)


# -- 1. OpenAI-compatible images: direct vs gateway vs the peers --------------------

def _has_image(status: int, body: bytes) -> bool:
    return status == 200 and (b'"b64_json"' in body or b'"url"' in body)


Target = tuple[int, dict[str, str], dict[str, Any]]  # port, headers, body


async def openai_path(targets: dict[str, Target], scale: Scale) -> dict[str, Any]:
    """For each target: latency at c=1 and rate at c=32. The targets take turns
    round by round, so a slow minute on the machine falls on all of them alike."""
    raws = {name: encode("POST", HOST, port, "/v1/images/generations", headers, body)
            for name, (port, headers, body) in targets.items()}

    def count(name: str, requests: int) -> int:
        return requests // (scale.litellm_divisor if name == "litellm" else 1)

    async def measure(name: str, requests: int, concurrency: int) -> Run:
        raw = raws[name]
        return await drive(HOST, targets[name][0], lambda _: raw, count(name, requests),
                           concurrency, ok=_has_image)

    for name in raws:  # warm-up
        await measure(name, max(1000, scale.rate_requests // 10), 32)
    runs: dict[str, dict[str, list[Run]]] = {name: {"c1": [], "c32": []} for name in raws}
    busy: dict[str, list[float]] = {name: [] for name in raws}
    for _ in range(scale.rounds):
        for name in raws:
            runs[name]["c1"].append(await measure(name, scale.latency_requests, 1))
            cpu = machine_cpu()
            runs[name]["c32"].append(await measure(name, scale.rate_requests, 32))
            busy[name].append(busy_share(cpu, machine_cpu()))
    results = {name: {level: _summary(r) for level, r in levels.items()}
               for name, levels in runs.items()}
    for name, shares in busy.items():
        results[name]["c32"]["cpu_busy"] = median(shares)
    for name, r in results.items():
        print(f"  {name:<14} c=1 p50 {r['c1']['p50_ms']:.2f} ms, "
              f"c=32 {r['c32']['rps']:.0f} req/s", flush=True)
    return results


def gateway_targets(gateway: int, fake: int, workers: int | None = None
                    ) -> dict[str, Target]:
    """The direct path; the gateway with one process (b64_json and url); and the
    gateway with :data:`WORKERS` processes, given its port (``workers``)."""
    auth = {"Authorization": f"Bearer {BENCH_KEY}"}
    targets: dict[str, Target] = {
        "direct": (fake, {"Authorization": "Bearer sk-fake"}, OPENAI_BODY),
        "gateway": (gateway, auth, OPENAI_BODY),
        "gateway (url)": (gateway, auth,
                          {**OPENAI_BODY, "model": "bench-image-url", "response_format": "url"}),
    }
    if workers is not None:
        targets[f"gateway x{WORKERS}"] = (workers, auth, OPENAI_BODY)
    return targets


def portkey_target(portkey: int, fake: int) -> dict[str, Target]:
    """Portkey passes the body through to the fake, as the direct path sends it."""
    return {"portkey": (portkey, portkey_headers(fake), OPENAI_BODY)}


def litellm_target(litellm: int) -> dict[str, Target]:
    return {"litellm": (litellm, {"Authorization": f"Bearer {LITELLM_KEY}"}, OPENAI_BODY)}


# -- 2 and 4. Native task API: submit and poll rates ---------------------------------

def _task_id(body: bytes) -> str:
    data = orjson.loads(body)
    task_id: str = data["data"]["taskId"]
    return task_id


class NativeRates:
    """Submit and poll rounds at c=64 against one gateway, kept apart so that rounds
    against several gateways can take turns (scenario 4).

    Each round of submits starts once the jobs of the one before are done, so that
    every round measures the same thing: submits while their own jobs run. Polls
    read jobs that those submits made."""

    def __init__(self, port: int, gateway: Service, db: Path,
                 model: str = "bench-image") -> None:
        self.port, self.gateway, self.db = port, gateway, db
        self.auth = {"Authorization": f"Bearer {BENCH_KEY}"}
        self.submit = encode("POST", HOST, port, NATIVE_PATH, self.auth,
                             {"model": model, "prompt": "a red fox in the snow"})
        self.submits: list[Run] = []
        self.polls: list[Run] = []
        self.ids: list[str] = []
        self.drained = 0.0
        self._polls_raw: list[bytes] = []

    async def warm_up(self) -> None:
        await drive(HOST, self.port, lambda _: self.submit, 200, 64)
        await self.wait_drained()

    async def wait_drained(self) -> float:
        """Seconds until no job is left to run (a backend of its own overrides it)."""
        return await wait_drained(self.db, timeout=120)

    async def submit_round(self, requests: int) -> None:
        run = await drive(HOST, self.port, lambda _: self.submit, requests, 64,
                          keep_bodies=True)
        self.ids += [_task_id(b) for b in run.bodies]
        run.bodies.clear()
        self.submits.append(run)
        self.drained = max(self.drained, await self.wait_drained())

    async def poll_round(self, requests: int) -> None:
        if not self._polls_raw:
            self._polls_raw = [
                encode("GET", HOST, self.port, f"{NATIVE_PATH}?task_id={i}", self.auth)
                for i in random.Random(7).sample(self.ids, min(len(self.ids), 2000))]
            await self._poll(500)  # warm-up
        self.polls.append(await self._poll(requests))

    async def _poll(self, requests: int) -> Run:
        raw = self._polls_raw
        return await drive(HOST, self.port, lambda i: raw[i % len(raw)], requests, 64)

    def figures(self) -> dict[str, Any]:
        rss, peak = self.gateway.memory_mb()
        s, p = _summary(self.submits), _summary(self.polls)
        return {"submit_rps": s["rps"], "submit_p99_ms": s["p99_ms"],
                "submit_errors": s["errors"],
                "poll_rps": p["rps"], "poll_p99_ms": p["p99_ms"], "poll_errors": p["errors"],
                "first_error": s["first_error"] or p["first_error"],
                "drain_s": self.drained, "rss_mb": rss, "peak_rss_mb": peak,
                "workers": len(self.gateway.children()) or 1}


async def native_rates(port: int, gateway: Service, db: Path, scale: Scale) -> dict[str, Any]:
    """Scenario 2: submit rate, then (once the submitted jobs are done) poll rate."""
    rates = NativeRates(port, gateway, db)
    await rates.warm_up()
    for _ in range(scale.rounds):
        await rates.submit_round(scale.submits)
    for _ in range(scale.rounds):
        await rates.poll_round(scale.polls)
    return rates.figures()


async def wait_drained(db: Path, timeout: float) -> float:
    """Seconds until no job is pending or processing (read from the SQLite file)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if _active_jobs(db) == 0:
            return time.perf_counter() - started
        await asyncio.sleep(0.1)
    raise RuntimeError(f"jobs still running after {timeout:g} s")


def _active_jobs(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute("SELECT COUNT(*) FROM jobs WHERE state IN "
                           "('pending', 'processing')").fetchone()
    return int(row[0])


def prefill(db: Path, rows: int) -> None:
    """Copy the one job in ``db`` ``rows`` times, as completed jobs of the same key
    created over the last 30 days, straight into the table (same schema, same
    indexes: the gateway made the file)."""
    conn = sqlite3.connect(db)
    try:
        conn.row_factory = sqlite3.Row
        template = dict(conn.execute("SELECT * FROM jobs ORDER BY created_at LIMIT 1")
                        .fetchone())
        columns = list(template)
        now = int(time.time() * 1000)
        month = 30 * 86400 * 1000
        rng = random.Random(11)

        def row(i: int) -> tuple[Any, ...]:
            created = now - month + rng.randrange(month)
            values = {**template, "id": f"pre{i:07d}{rng.getrandbits(40):010x}",
                      "created_at": created, "updated_at": created + 900,
                      "started_at": created + 5, "completed_at": created + 900,
                      "run_after": created, "deadline_at": created + 600000,
                      "lease_owner": None, "lease_until": None}
            return tuple(values[c] for c in columns)

        sql = (f"INSERT INTO jobs ({', '.join(columns)}) "  # noqa: S608 - the table's own columns
               f"VALUES ({', '.join('?' for _ in columns)})")
        for start in range(0, rows, 10000):
            conn.executemany(sql, (row(i) for i in range(start, min(rows, start + 10000))))
            conn.commit()
    finally:
        conn.close()


async def table_sizes(workdir: Path, fake_port: int, scale: Scale) -> dict[str, Any]:
    """Scenario 4: the native rates on tables pre-filled with N completed jobs.

    One gateway per table size, all running at once; their rounds take turns, in
    the opposite order each round, so that a drift in the machine's speed during the
    scenario falls on every size alike instead of on the last one measured."""
    services: list[Service] = []
    try:
        rates: dict[int, NativeRates] = {}
        for size in scale.sizes:
            gateway, port, db = await _prefilled_gateway(workdir / f"table-{size}",
                                                         fake_port, size)
            services.append(gateway)
            rates[size] = NativeRates(port, gateway, db)
            await rates[size].warm_up()
        turns = [list(scale.sizes) if r % 2 == 0 else list(reversed(scale.sizes))
                 for r in range(scale.rounds)]
        for turn in turns:
            for size in turn:
                await rates[size].submit_round(scale.submits)
        for turn in turns:
            for size in turn:
                await rates[size].poll_round(scale.polls)
        results = {str(size): r.figures() for size, r in rates.items()}
    finally:
        for service in services:
            service.stop()
    for size in scale.sizes:
        r = results[str(size)]
        print(f"  {size:>7} jobs: submit {r['submit_rps']:.0f}/s, poll {r['poll_rps']:.0f}/s, "
              f"RSS {r['rss_mb']:.0f} MB", flush=True)
    return results


async def _prefilled_gateway(folder: Path, fake_port: int, size: int
                             ) -> tuple[Service, int, Path]:
    """A gateway on a table of ``size`` completed jobs: the gateway makes the file and
    one job, ``prefill`` copies that job, and the gateway starts again on the result."""
    os.mkdir(folder)
    gateway, port = await start_gateway(folder, fake_port)
    db = folder / "data" / "muxproxy.db"
    try:
        raw = encode("POST", HOST, port, NATIVE_PATH,
                     {"Authorization": f"Bearer {BENCH_KEY}"},
                     {"model": "bench-image", "prompt": "template"})
        await drive(HOST, port, [raw].__getitem__, 1, 1)
        await wait_drained(db, 30)
    finally:
        gateway.stop()
    started = time.perf_counter()
    prefill(db, size)
    print(f"  pre-filled {size} jobs in {time.perf_counter() - started:.1f} s", flush=True)
    gateway, port = await start_gateway(folder, fake_port)
    return gateway, port, db


# -- 3. Many async jobs with callbacks --------------------------------------------------

class Receiver:
    """The callback receiver: counts distinct tasks and when the last one arrived."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}
        self.last_at = 0.0
        self.everything = asyncio.Event()
        self.expected = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/callback", self.callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port, backlog=1024).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def callback(self, request: web.Request) -> web.Response:
        data = orjson.loads(await request.read())["data"]
        self.seen[data["taskId"]] = data["state"]
        self.last_at = time.perf_counter()
        if self.expected and len(self.seen) >= self.expected:
            self.everything.set()
        return web.Response(text="ok")


async def callbacks(port: int, gateway: Service, receiver: Receiver, jobs: int,
                    timeout: float = 300) -> dict[str, Any]:
    receiver.expected = jobs
    body = {"model": "bench-queue", "prompt": "a red fox in the snow",
            "callback_url": f"http://{HOST}:{receiver.port}/callback"}
    raw = encode("POST", HOST, port, NATIVE_PATH, {"Authorization": f"Bearer {BENCH_KEY}"},
                 body)
    cpu_before = gateway.cpu_seconds()
    started = time.perf_counter()
    submitted = await drive(HOST, port, lambda _: raw, jobs, 64)
    submit_s = time.perf_counter() - started
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(receiver.everything.wait(), timeout)
    cpu = gateway.cpu_seconds() - cpu_before
    rss, peak = gateway.memory_mb()
    states = list(receiver.seen.values())
    return {"jobs": jobs, "submit_errors": submitted.errors,
            "first_error": submitted.first_error, "submit_s": submit_s,
            "callbacks": len(states), "completed": states.count("completed"),
            "last_callback_s": (receiver.last_at - started) if states else float("nan"),
            "cpu_s": cpu, "cpu_ms_per_job": cpu / jobs * 1000, "rss_mb": rss,
            "peak_rss_mb": peak}
