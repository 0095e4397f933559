"""PostgreSQL unreachable for about five seconds under load: every surface answers
503 with Retry-After in its own shape, /readyz says not ready, the steps running at
the cut keep their results until the database takes them, and everything resumes.

The outage is a private server of the test's own, stopped (immediate mode, as a
crash would) and started again: the shared server is never touched."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from muxproxy.clock import ManualClock
from muxproxy.errors import StoreUnavailable
from muxproxy.pipeline.jobs import Job, JobState
from muxproxy.pipeline.runner import WRITE_RETRY_SECONDS
from tests.support.gateway import RunningGateway, base_config, merge, run_gateway
from tests.support.private_postgres import PrivatePostgres
from tests.support.seed_models import seed_models
from tests.support.wait import eventually

PAYER = "outage-payer-key-0001"
ADMIN = "outage-admin-token-0001"
OUTAGE_SECONDS = 5.0
HEADERS = {"Authorization": f"Bearer {PAYER}"}


def config(tmp_path: Path, url: str) -> dict[str, Any]:
    return merge(base_config(tmp_path), {
        "database": {"url": url, "pool_size": 4, "connect_timeout_seconds": 1.0,
                     "statement_timeout_seconds": 5.0},
        "admin": {"token": ADMIN},
        "keys": [{"name": "payer", "key": PAYER, "credits": 10_000}],
        "providers": {"slow": {"kind": "demo", "options": {"delay_seconds": 1.5}}},
        "models": {**seed_models(),
                   "priced": {"credits": 2, "routes": [{"provider": "slow", "model": "p"}]}},
    })


# (surface, method, path, body, headers): one create or read on each surface.
PROBES: list[tuple[str, str, str, dict[str, Any] | None, dict[str, str]]] = [
    ("native", "POST", "/api/v1/images/generations", {"model": "priced", "prompt": "x"},
     HEADERS),
    ("openai", "POST", "/v1/images/generations", {"model": "priced", "prompt": "x"}, HEADERS),
    ("modelmux", "POST", "/api/v1/generations",
     {"prompt": "x", "model": "nano-banana-pro", "resolution": "1k"}, HEADERS),
    ("admin", "GET", "/admin/keys", None, {"Authorization": f"Bearer {ADMIN}"}),
]


def assert_shape(surface: str, body: Any) -> None:
    if surface == "native":
        assert body["code"] == 503 and body["msg"] and "data" in body, body
    elif surface == "openai":
        assert body["error"]["message"] and body["error"]["type"], body
    else:  # modelmux and admin: {"error": ..., "code": ...}
        assert isinstance(body["error"], str) and body["code"], body


class Load:
    """Native submits in a loop: every id handed out, every status seen."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.accepted: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        n = 0
        while not self.stopped.is_set():
            n += 1
            async with self.http.post(f"{self.url}/api/v1/images/generations", headers=HEADERS,
                                      json={"model": "priced", "prompt": f"load {n}"}) as resp:
                self.statuses[resp.status] += 1
                body = await resp.json()
                if resp.status == 200:
                    self.accepted.append(body["data"]["taskId"])
                else:
                    assert resp.status == 503 and "retry-after" in resp.headers, body
            await asyncio.sleep(0.05)  # a steady trickle, not a flood


async def test_an_outage_answers_503_and_loses_no_result(tmp_path: Path,
                                                         stoppable_postgres: PrivatePostgres
                                                         ) -> None:
    pg = stoppable_postgres
    async with run_gateway(config(tmp_path, pg.url)) as gw:
        load = Load(gw.http, gw.url)
        loader = asyncio.create_task(load.run())
        # OpenAI-surface requests whose jobs run across the cut: answered once it is over.
        waiting = [asyncio.create_task(openai_call(gw.http, gw.url, i)) for i in range(2)]
        try:
            await outage(gw, pg, load, loader, waiting)
        finally:
            for task in (loader, *waiting):
                task.cancel()
            await asyncio.gather(loader, *waiting, return_exceptions=True)


async def openai_call(http: aiohttp.ClientSession, url: str, i: int) -> tuple[int, Any]:
    async with http.post(f"{url}/v1/images/generations", headers=HEADERS,
                         json={"model": "priced", "prompt": f"waiting {i}"}) as resp:
        return resp.status, await resp.json()


async def outage(gw: RunningGateway, pg: PrivatePostgres, load: Load,
                 loader: asyncio.Task[None], waiting: list[asyncio.Task[tuple[int, Any]]]
                 ) -> None:
    store = gw.state.store

    async def steps_running() -> bool:
        counts = await store.count_jobs()
        return counts.get(("priced", "slow", "processing"), 0) >= 3

    await eventually(steps_running, timeout=10)
    await pg.stop()
    cut = time.monotonic()

    for surface, method, path, body, headers in PROBES:
        async with gw.http.request(method, gw.url + path, json=body,
                                   headers=headers) as resp:
            assert resp.status == 503, (surface, await resp.text())
            assert float(resp.headers["retry-after"]) > 0, surface
            assert_shape(surface, await resp.json())
    async with gw.http.get(f"{gw.url}/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["store"] == "unreachable"

    async def reconnecting() -> bool:
        # The listener lost its connection: shown, not judged.
        async with gw.http.get(f"{gw.url}/readyz") as resp:
            return bool((await resp.json())["signals"] == "reconnecting")

    await eventually(reconnecting, timeout=10, interval=0.1)

    await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut)))
    await pg.start()

    async def ready() -> bool:
        async with gw.http.get(f"{gw.url}/readyz") as resp:
            return resp.status == 200 and (await resp.json())["signals"] == "listening"

    await eventually(ready, timeout=15, interval=0.1)
    before = len(load.accepted)
    await eventually(lambda: len(load.accepted) >= before + 3, timeout=10)
    load.stopped.set()
    await loader

    for request in waiting:
        status, body = await request
        assert status == 200 and body["data"], body
    assert load.statuses[503] > 0 and set(load.statuses) <= {200, 503}, load.statuses

    async def all_ended() -> bool:
        for task_id in load.accepted:
            job = await store.get_job(task_id)
            if job is None or not job.is_terminal:
                return False
        return True

    await eventually(all_ended, timeout=30, interval=0.1)
    for task_id in load.accepted:
        job = await store.get_job(task_id)
        assert job is not None and job.state == "completed", (task_id, job)
        assert job.billing == "charged" and job.attempts <= 1, job
    key = await store.key_named("payer")
    assert key is not None and key.balance == await store.ledger_sum(key.id)


async def test_a_step_whose_start_is_refused_starts_once_the_database_is_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write that starts a step (pending to processing, which charges the job) is
    tried again on the runner's schedule, as its outcome's is: a cut of a few seconds
    does not leave the job waiting for its lease to lapse."""
    clock = ManualClock()
    async with run_gateway(config(tmp_path, f"sqlite:///{tmp_path}/m.db"), clock=clock) as gw:
        store = gw.state.store
        transition, release = store.transition, store.release
        refused: list[str] = []

        def down() -> bool:  # for the start's first two tries: what a lost database raises
            return len(refused) < 2

        async def cut(job: Job | str, expected: JobState, target: JobState,
                      **kwargs: Any) -> Job:
            if expected is JobState.PENDING and down():
                refused.append(job if isinstance(job, str) else job.id)
                raise StoreUnavailable()
            return await transition(job, expected, target, **kwargs)

        async def cut_release(job_id: str, owner: str, *, now: int) -> None:
            if down():
                raise StoreUnavailable()
            await release(job_id, owner, now=now)

        monkeypatch.setattr(store, "transition", cut)
        monkeypatch.setattr(store, "release", cut_release)
        task_id = await gw.submit({"model": "demo-image", "prompt": "x"}, key=PAYER)
        for tries, delay in enumerate(WRITE_RETRY_SECONDS[:2], start=1):
            await eventually(lambda: len(refused) == tries)  # noqa: B023
            clock.advance(delay)
        data = await gw.wait_terminal(task_id, key=PAYER)
        assert data["state"] == "completed" and refused == [task_id, task_id]
        job = await store.get_job(task_id)
        assert job is not None and job.attempts == 0 and job.recoveries == 0
