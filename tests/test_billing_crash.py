"""A real process killed between charge and completion: after the restart the
ledger still balances and each job's billing matches its final state."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp

from tests.support.process import free_port, gateway_process
from tests.support.wait import eventually
from tests.test_restart import HEADERS, row, submit, wait_terminal

KEY = HEADERS["Authorization"].removeprefix("Bearer ")


def write_config(path: Path, *, delay: float, broken: bool) -> Path:
    path.write_text(f"""
[server]
port = "${{MUXPROXY_PORT}}"
public_url = "${{MUXPROXY_PUBLIC_URL}}"
secret = "billing-crash-secret-01"
[database]
url = "sqlite:///state/jobs.db"
[storage]
url = "file://state/images"
[logging]
level = "warning"
[[keys]]
name = "alpha"
key = "{KEY}"
credits = 100
[providers.works]
kind = "demo"
options = {{ delay_seconds = {delay} }}
[providers.breaks]
kind = "demo"
options = {{ delay_seconds = {delay}, failure_rate = {1.0 if broken else 0.0} }}
[models."sync"]
credits = 10
routes = [{{ provider = "works", model = "w" }}]
[models."queued"]
credits = 25
routes = [{{ provider = "breaks", model = "b" }}]
""")
    return path


def ledger(db: Path) -> tuple[int, int, dict[str, list[tuple[str, int]]]]:
    with sqlite3.connect(db) as conn:
        balance, total = conn.execute(
            "SELECT balance, (SELECT SUM(amount) FROM ledger WHERE key_id = api_keys.id) "
            "FROM api_keys WHERE name = 'alpha'").fetchone()
        by_job: dict[str, list[tuple[str, int]]] = {}
        for job_id, kind, amount in conn.execute(
                "SELECT job_id, kind, amount FROM ledger WHERE job_id IS NOT NULL ORDER BY id"):
            by_job.setdefault(job_id, []).append((kind, amount))
    return balance, total, by_job


async def test_crash_between_charge_and_completion(tmp_path: Path) -> None:
    slow = write_config(tmp_path / "slow.toml", delay=60, broken=False)
    after = write_config(tmp_path / "after.toml", delay=0, broken=True)
    db = tmp_path / "state" / "jobs.db"
    port = free_port()
    async with aiohttp.ClientSession() as http:
        async with gateway_process(slow, port) as gw:
            completes = await submit(http, gw.url, "sync")
            fails = await submit(http, gw.url, "queued")
            await eventually(lambda: all(row(db, j)["billing"] == "charged"
                                         for j in (completes, fails)))
            await gw.kill()
        balance, total, _ = ledger(db)
        assert balance == total == 100 - 10 - 25  # charged, not yet finished

        async with gateway_process(after, port) as gw:
            assert (await wait_terminal(http, gw.url, completes))["state"] == "completed"
            assert (await wait_terminal(http, gw.url, fails))["state"] == "failed"
    balance, total, by_job = ledger(db)
    assert balance == total == 100 - 10
    assert row(db, completes)["billing"] == "charged"
    assert row(db, fails)["billing"] == "refunded"
    # Charged once and refunded once, although both jobs ran twice.
    assert by_job[completes] == [("hold", -10), ("release", 10), ("charge", -10)]
    assert by_job[fails] == [("hold", -25), ("release", 25), ("charge", -25), ("refund", 25)]
    assert row(db, completes)["recoveries"] == row(db, fails)["recoveries"] == 1
