"""A real process killed between charge and completion: after the restart the
ledger still balances and each job's billing matches its final state, on SQLite
and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.support.audit import Database, job, key_ledger, opened
from tests.support.databases import TestDatabase
from tests.support.process import free_port, gateway_process
from tests.support.wait import eventually
from tests.system.test_restart import HEADERS, submit, wait_terminal

KEY = HEADERS["Authorization"].removeprefix("Bearer ")


def write_config(path: Path, *, delay: float, broken: bool, url: str) -> Path:
    path.write_text(f"""
[server]
port = "${{MUXPROXY_PORT}}"
public_url = "${{MUXPROXY_PUBLIC_URL}}"
secret = "billing-crash-secret-01"
[database]
url = "{url}"
[storage]
url = "file://state/images"
[logging]
level = "warning"
[jobs]
lease_margin_seconds = 2  # the killed process's leases lapse within seconds
[[keys]]
name = "alpha"
key = "{KEY}"
credits = 100
[providers.works]
kind = "demo"
timeout_seconds = 2
options = {{ delay_seconds = {delay} }}
[providers.breaks]
kind = "demo"
timeout_seconds = 2
options = {{ delay_seconds = {delay}, failure_rate = {1.0 if broken else 0.0} }}
[models."sync"]
credits = 10
routes = [{{ provider = "works", model = "w" }}]
[models."queued"]
credits = 25
routes = [{{ provider = "breaks", model = "b" }}]
""")
    return path


async def ledger(db: Database) -> tuple[int, int, dict[str, list[tuple[str, int]]]]:
    async with opened(db) as store:
        key = await store.key_named("alpha")
        assert key is not None
        balance, total = key.balance, await store.ledger_sum(key.id)
        by_job: dict[str, list[tuple[str, int]]] = {}
        for entry in await key_ledger(store, key.id):
            if entry.job_id is not None:
                by_job.setdefault(entry.job_id, []).append((entry.kind.value, entry.amount))
    return balance, total, by_job


async def billing(db: Database, task_id: str) -> str:
    return str((await job(db, task_id))["billing"])


async def test_crash_between_charge_and_completion(tmp_path: Path,
                                                   database: TestDatabase) -> None:
    slow = write_config(tmp_path / "slow.toml", delay=60, broken=False, url=database.url)
    after = write_config(tmp_path / "after.toml", delay=0, broken=True, url=database.url)
    db = database.audit
    port = free_port()
    async with aiohttp.ClientSession() as http:
        async with gateway_process(slow, port) as gw:
            completes = await submit(http, gw.url, "sync")
            fails = await submit(http, gw.url, "queued")
            async def both_charged() -> bool:
                return [await billing(db, j) for j in (completes, fails)] == ["charged"] * 2

            await eventually(both_charged)
            await gw.kill()
        balance, total, _ = await ledger(db)
        assert balance == total == 100 - 10 - 25  # charged, not yet finished

        async with gateway_process(after, port) as gw:
            assert (await wait_terminal(http, gw.url, completes))["state"] == "completed"
            assert (await wait_terminal(http, gw.url, fails))["state"] == "failed"
    balance, total, by_job = await ledger(db)
    assert balance == total == 100 - 10
    assert await billing(db, completes) == "charged"
    assert await billing(db, fails) == "refunded"
    # Charged once and refunded once, although both jobs ran twice.
    assert by_job[completes] == [("hold", -10), ("release", 10), ("charge", -10)]
    assert by_job[fails] == [("hold", -25), ("release", 25), ("charge", -25), ("refund", 25)]
    assert (await job(db, completes))["recoveries"] == (await job(db, fails))["recoveries"] == 1
