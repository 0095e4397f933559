"""``muxproxy serve --workers N``: N processes serve one port on one database (a
SQLite file or PostgreSQL), a worker that dies is started again, SIGTERM stops them
all, and a database only one process can use is refused."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from muxproxy.cli import main
from muxproxy.store.postgres import PostgresStore
from tests.support.audit import Database, jobs, unfinished
from tests.support.databases import TestDatabase
from tests.support.gateway import KEY_A
from tests.support.process import GatewayProcess, free_port, gateway_process
from tests.support.wait import eventually

HEADERS = {"Authorization": f"Bearer {KEY_A}"}


def write_config(path: Path, database_url: str) -> Path:
    path.write_text(f"""
[server]
port = "${{MUXPROXY_PORT}}"
public_url = "${{MUXPROXY_PUBLIC_URL}}"
secret = "workers-test-secret-0123"
graceful_shutdown_seconds = 3
[database]
url = "{database_url}"
pool_size = 3
[storage]
url = "file://state/images"
[jobs]
retry_base_seconds = 0.01
retry_cap_seconds = 0.05
poll_initial_seconds = 0.01
poll_cap_seconds = 0.05
[logging]
level = "info"
[[keys]]
name = "alpha"
key = "{KEY_A}"
unlimited = true
[providers.demo]
kind = "demo"
[providers.slow]
kind = "demo"
options = {{ delay_seconds = 1.5 }}
[models."demo-image"]
routes = [{{ provider = "demo", model = "demo-image" }}]
[models."slow-image"]
routes = [{{ provider = "slow", model = "demo-image" }}]
""")
    return path


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def answering_pid(url: str) -> int:
    """The pid of the worker that answers a scrape on a new connection."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http, \
            http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        match = re.search(r'^muxproxy_process_info\{pid="(\d+)"\} 1\.0$', await resp.text(),
                          re.MULTILINE)
    assert match is not None
    return int(match.group(1))


async def serving_pids(url: str, wanted: int) -> set[int]:
    """Scrape on fresh connections until ``wanted`` different workers answered."""
    seen: set[int] = set()

    async def enough() -> bool:
        seen.add(await answering_pid(url))
        return len(seen) >= wanted

    await eventually(enough, timeout=20)
    return seen


async def submit_and_finish(url: str, count: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async def one(i: int) -> None:
            async with http.post(f"{url}/api/v1/images/generations", headers=HEADERS,
                                 json={"model": "demo-image", "prompt": f"p{i}"}) as resp:
                assert resp.status == 200, await resp.text()
                task_id = (await resp.json())["data"]["taskId"]

            async def ended() -> bool:
                async with http.get(f"{url}/api/v1/images/generations", headers=HEADERS,
                                    params={"task_id": task_id}) as resp:
                    state: str = (await resp.json())["data"]["state"]
                    return state == "completed"

            await eventually(ended, timeout=20, interval=0.02)

        await asyncio.gather(*(one(i) for i in range(count)))


async def running_owners(url: str, db: Database) -> set[str]:
    """The lease owners of slow jobs running at once, submitted on fresh connections
    until two owners hold some."""
    owners: set[str] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        async def two_owners() -> bool:
            async with http.post(f"{url}/api/v1/images/generations", headers=HEADERS,
                                 json={"model": "slow-image", "prompt": "hold"}) as resp:
                assert resp.status == 200
            owners.update(job["lease_owner"] for job in await jobs(db)
                          if job["state"] == "processing" and job["lease_owner"])
            return len(owners) >= 2

        await eventually(two_owners, timeout=20, interval=0.05)
    return owners


async def nothing_runs(db: Database) -> bool:
    return await unfinished(db) == 0


async def test_two_workers_serve_one_port_and_stop_together(tmp_path: Path,
                                                            database: TestDatabase) -> None:
    config = write_config(tmp_path / "config.toml", database.url)
    log = tmp_path / "gateway.log"
    async with gateway_process(config, log=log, args=["--workers", "2"]) as gw:
        # Both serve before any job is made: a worker's recovery at start would take
        # the leases of jobs its sibling already runs (the lease suite's to settle).
        workers = await serving_pids(gw.url, 2)
        assert all(parent_of(pid) == gw.pid for pid in workers), workers
        await submit_and_finish(gw.url, 6)
        # Each worker runs jobs under a lease owner of its own (host:pid:tag).
        owners = await running_owners(gw.url, database.audit)
        assert {int(owner.split(":")[1]) for owner in owners} == workers, (owners, workers)

        # A worker that dies is reported and replaced; the port keeps answering. (Killed
        # once nothing runs, for the same reason.)
        await eventually(lambda: nothing_runs(database.audit), timeout=20, interval=0.1)
        dead = min(workers)
        os.kill(dead, signal.SIGKILL)
        await eventually(lambda: "worker died" in log.read_text(), timeout=10)
        await eventually(lambda: not alive(dead) or parent_of(dead) != gw.pid, timeout=10)
        survivors = await serving_pids(gw.url, 2)
        assert dead not in survivors and len(survivors) == 2
        await submit_and_finish(gw.url, 6)

        assert await gw.terminate() == 0
        for pid in survivors:
            await eventually(lambda pid=pid: not alive(pid), timeout=5)  # type: ignore[misc]
    text = log.read_text()
    assert text.count('"worker stopped"') == 2, text[-3000:]
    assert "Traceback" not in text


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path,
                                                          postgres_url: str) -> None:
    config = write_config(tmp_path / "config.toml", postgres_url)
    async with gateway_process(config, args=["--workers", "2"]) as gw:
        workers = await serving_pids(gw.url, 2)
        await gw.kill()
    for pid in workers:
        await eventually(lambda pid=pid: not alive(pid), timeout=10)  # type: ignore[misc]


def test_several_workers_on_a_database_in_memory_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path / "config.toml", "sqlite:///:memory:")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MUXPROXY_PORT", "8080")
    monkeypatch.setenv("MUXPROXY_PUBLIC_URL", "http://127.0.0.1:8080")
    assert main(["serve", "--config", str(config), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "--workers 2 needs a database that processes share" in err
    assert list(tmp_path.iterdir()) == [config]  # nothing was opened or created


async def test_a_worker_that_cannot_start_stops_them_all(tmp_path: Path,
                                                         postgres_url: str) -> None:
    # A database that does not exist: every worker would fail the same way forever.
    config = write_config(tmp_path / "config.toml", postgres_url + "_missing")
    log = tmp_path / "gateway.log"
    process = GatewayProcess(config, free_port(), log, args=["--workers", "2"])
    with pytest.raises(RuntimeError, match="gateway exited"):
        await process.start()
    assert await process.wait() == 3
    assert "worker could not start; stopping every worker" in log.read_text()


async def test_processes_starting_together_make_each_config_key_once(postgres_url: str) -> None:
    """Every process upserts the config file's keys as it starts: two at once must both
    start, with one key and one initial top-up between them."""
    stores = [PostgresStore(postgres_url, pool_size=2) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        for i in range(10):
            keys = await asyncio.gather(*(store.upsert_key(
                f"key-{i}", f"hash-{i}", now=1, initial_credits=5) for store in stores))
            assert keys[0].id == keys[1].id
            assert await stores[0].ledger_sum(keys[0].id) == 5 == \
                (await stores[1].key_named(f"key-{i}") or keys[0]).balance
    finally:
        for store in stores:
            await store.aclose()
