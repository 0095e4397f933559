"""The gateway on a PostgreSQL database: the three surfaces end to end, and every
priced job charged exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI

from muxproxy.store.postgres import PostgresStore
from tests.support.gateway import base_config, merge, run_gateway
from tests.support.seed_models import seed_models

PAYER = "payer-key-000000001"


async def test_the_three_surfaces_on_postgres_charge_once(tmp_path: Path,
                                                          postgres_url: str) -> None:
    config = merge(base_config(tmp_path), {
        "database": {"url": postgres_url, "pool_size": 4},
        "keys": [{"name": "payer", "key": PAYER, "credits": 100}],
        "models": {**seed_models(),
                   "priced": {"credits": 5, "routes": [{"provider": "demo", "model": "p"}]}},
    })
    async with run_gateway(config) as gw:
        assert isinstance(gw.state.store, PostgresStore)
        async with gw.http.post(f"{gw.url}/api/v1/images/generations", headers=gw.headers(PAYER),
                                json={"model": "priced", "prompt": "a lighthouse"}) as resp:
            assert resp.status == 200
            native_id = (await resp.json())["data"]["taskId"]
        assert (await gw.wait_terminal(native_id, key=PAYER))["state"] == "completed"

        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=PAYER, max_retries=0) as client:
            raw = await client.images.with_raw_response.generate(
                model="priced", prompt="a lighthouse", size="256x128")
        openai_id = raw.headers["x-muxproxy-job-id"]
        assert raw.parse().data and (await gw.task(openai_id, key=PAYER))["state"] == "completed"

        async with gw.http.post(f"{gw.url}/api/v1/generations", headers=gw.headers(PAYER),
                                json={"prompt": "a lighthouse", "model": "nano-banana-pro",
                                      "resolution": "1k"}) as resp:
            assert resp.status == 200
            created: dict[str, Any] = await resp.json()
        mux_id = created["historyId"]
        assert (await gw.wait_terminal(mux_id, key=PAYER))["state"] == "completed"

        store = gw.state.store
        key = await store.key_named("payer")
        assert key is not None
        rows = Counter((e.job_id, e.kind.value) for e in await store.ledger(key.id, limit=100))
        prices = {native_id: 5, openai_id: 5, mux_id: created["creditsCharged"]}
        assert prices[mux_id] > 0
        for job_id, price in prices.items():
            assert {kind: n for (job, kind), n in rows.items() if job == job_id} == \
                {"hold": 1, "release": 1, "charge": 1}
            job = await store.get_job(job_id)
            assert job is not None and job.billing == "charged" and job.credits == price
        assert key.balance == await store.ledger_sum(key.id) == 100 - sum(prices.values())
