"""``muxproxy copy-db``: a SQLite database a real gateway filled (jobs completed,
failed, pending and processing, callbacks delivered after failed attempts and still
pending, a ledger, idempotency records, a signing secret) copied to PostgreSQL and
back to a fresh SQLite file, row for row; a non-empty target refused unless forced;
and a gateway run on the copy carries on where the source stopped."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from muxproxy.cli import main
from muxproxy.store import Store, open_store
from muxproxy.store.copy import verify_copy
from muxproxy.store.tables import STATE_TABLES, Row, TableAccess
from tests.support.audit import all_deliveries, all_jobs
from tests.support.gateway import KEY_A, base_config, merge, run_gateway
from tests.support.wait import eventually
from tests.support.webhooks import LOOPBACK, Answer, Receiver

PAYER = "copy-payer-key-00001"


def config(tmp_path: Path, database_url: str, hook_delay: float = 60.0) -> dict[str, Any]:
    return merge(base_config(tmp_path), {
        "database": {"url": database_url},
        "webhooks": {**LOOPBACK["webhooks"], "quick_backoff_seconds": 0.05, "jitter": 0.0},
        "keys": [{"name": "alpha", "key": KEY_A, "unlimited": True},
                 {"name": "payer", "key": PAYER, "credits": 500}],
        "providers": {
            "broken": {"kind": "demo", "options": {"failure_rate": 1.0}},
            "held": {"kind": "demo", "max_concurrency": 1,
                     "options": {"delay_seconds": hook_delay}},
        },
        "models": {
            "priced": {"credits": 3, "routes": [{"provider": "demo", "model": "p"}]},
            "priced-broken": {"credits": 4, "routes": [{"provider": "broken", "model": "b"}]},
            "held": {"credits": 5, "routes": [{"provider": "held", "model": "h"}]},
        },
    })


async def fill(tmp_path: Path, db: Path) -> None:
    """Real traffic on a SQLite gateway, stopped with work still in flight."""
    async with Receiver() as good, Receiver() as down, \
            run_gateway(config(tmp_path, f"sqlite:///{db}")) as gw:
        good.script.extend([Answer(status=500), Answer(status=503)])
        down.default = Answer(status=500)
        async with gw.http.post(f"{gw.url}/api/v1/webhooks/secret",
                                headers=gw.headers(PAYER)) as resp:
            assert resp.status == 200
        ended = {await gw.submit({"model": "priced", "prompt": f"p{i}",
                                  "callback_url": good.url()}, key=PAYER): PAYER
                 for i in range(3)}
        ended[await gw.submit({"model": "priced-broken", "prompt": "b",
                               "callback_url": down.url()}, key=PAYER)] = PAYER
        for i in range(2):
            ended[await gw.submit({"model": "demo-image-async", "prompt": f"a{i}"})] = KEY_A
        async with gw.http.post(f"{gw.url}/api/v1/images/generations",
                                headers={**gw.headers(PAYER), "Idempotency-Key": "once-1"},
                                json={"model": "priced", "prompt": "idem"}) as resp:
            assert resp.status == 200
            ended[(await resp.json())["data"]["taskId"]] = PAYER
        for task_id, key in ended.items():
            await gw.wait_terminal(task_id, key=key)
        await gw.submit({"model": "held", "prompt": "running"}, key=PAYER)
        await gw.submit({"model": "held", "prompt": "queued"}, key=PAYER)
        await good.wait_hits(3 + 2)  # two refused, then three delivered
        await down.wait_hits(2)

        async def delivered() -> bool:
            rows = await all_deliveries(gw.state.store)
            return Counter(d.status.value for d in rows) == {"delivered": 3, "pending": 1}

        await eventually(delivered, timeout=10)


def comparable(value: Any) -> Any:
    """A JSON column as values: PostgreSQL's jsonb keeps the JSON, not its spelling."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        return orjson.loads(value)
    return value


async def table_rows(store: Store) -> dict[str, list[Row]]:
    assert isinstance(store, TableAccess)
    out: dict[str, list[Row]] = {}
    for table in STATE_TABLES:
        columns = sorted(await store.columns(table.name))
        rows = await store.read_rows(table, columns, None, 100_000)
        out[table.name] = [tuple(comparable(v) for v in row) for row in rows]
    return out


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, ["copy-db", *args])


async def test_sqlite_to_postgres_and_back_row_for_row(tmp_path: Path, postgres_url: str,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    db, back = tmp_path / "muxproxy.db", tmp_path / "back.db"
    await fill(tmp_path, db)
    source_url = f"sqlite:///{db}"

    assert await cli("--from", source_url, "--to", postgres_url) == 0
    out = capsys.readouterr().out
    assert "copy verified" in out and "webhook_attempts" in out, out
    assert await cli("--from", f"sqlite:///{db}", "--to", postgres_url) == 2
    assert "not empty" in capsys.readouterr().err
    assert await cli("--from", source_url, "--to", postgres_url, "--force") == 0
    assert await cli("--from", postgres_url, "--to", f"sqlite:///{back}") == 0
    capsys.readouterr()

    original, copy, returned = (open_store(u) for u in (source_url, postgres_url,
                                                         f"sqlite:///{back}"))
    for store in (original, copy, returned):
        await store.open()
    try:
        rows = await table_rows(original)
        assert rows == await table_rows(returned)
        count = {name: len(r) for name, r in rows.items()}
        assert count["webhook_attempts"] >= 5 and count["idempotency"] == 1, count
        assert count["webhook_secrets"] == 1 and count["ledger"] >= 15, count
        states = Counter(j.state.value for j in await all_jobs(copy))
        assert states == {"completed": 6, "failed": 1, "processing": 1, "pending": 1}, states
        assert (await verify_copy(original, copy)).ok

        # The check finds a copy that went astray.
        payer = await copy.key_named("payer")
        assert payer is not None
        await copy.topup(payer.id, 7, now=1, note="only in the copy")
        report = await verify_copy(original, copy)
        assert not report.ok and any("payer" in p for p in report.problems), report.problems
    finally:
        for store in (original, copy, returned):
            await store.aclose()


async def test_a_gateway_carries_on_from_the_copy(tmp_path: Path, postgres_url: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "muxproxy.db"
    await fill(tmp_path, db)
    assert await cli("--from", f"sqlite:///{db}", "--to", postgres_url) == 0
    capsys.readouterr()
    async with run_gateway(config(tmp_path, postgres_url, hook_delay=0)) as gw:
        store = gw.state.store
        # The held jobs finish, a new priced job adds ledger rows after the copied ones.
        new = await gw.submit({"model": "priced", "prompt": "after the move"}, key=PAYER)
        assert (await gw.wait_terminal(new, key=PAYER))["state"] == "completed"

        async def every_job_ended() -> bool:
            return all(j.is_terminal for j in await all_jobs(store))

        await eventually(every_job_ended, timeout=20)
        payer = await store.key_named("payer")
        assert payer is not None
        # Four priced jobs (3 each), the failed one refunded, two held (5 each), the new one.
        assert payer.balance == await store.ledger_sum(payer.id) == 500 - 4 * 3 - 2 * 5 - 3


def test_a_missing_source_or_bad_url_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    target = f"sqlite:///{tmp_path}/new.db"
    assert main(["copy-db", "--from", f"sqlite:///{tmp_path}/none.db", "--to", target]) == 2
    assert "no database file" in capsys.readouterr().err
    assert main(["copy-db", "--from", "mysql://x/y", "--to", target]) == 2
    assert "database.url" in capsys.readouterr().err
    assert not (tmp_path / "new.db").exists()
