"""Credits: held at submit, charged when the job runs, refunded when it fails; the
balance always equals the ledger."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from tests.fakes.gemini import FakeGemini, running
from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import RunningGateway, merge, run_gateway
from tests.support.provider_calls import serve

PAYER = "payer-key-000000001"
PRICED: dict[str, Any] = {
    "keys": [{"name": "payer", "key": PAYER, "credits": 20}],
    "providers": {"broken": {"kind": "demo", "options": {"failure_rate": 1.0}}},
    "models": {
        "priced": {"credits": 5, "routes": [{"provider": "demo", "model": "p"}]},
        "priced-broken": {"credits": 7, "routes": [{"provider": "broken", "model": "b"}]},
        "tiered": {"credits": {"1k": {"standard": 2, "high": 9}, "2k": 12},
                   "routes": [{"provider": "demo", "model": "t"}]},
    },
}


@pytest.fixture
async def billed(config: dict[str, Any]) -> Any:
    merged = merge(config, PRICED)
    merged["keys"] = config["keys"] + PRICED["keys"]
    async with run_gateway(merged) as gw:
        yield gw


async def post(gw: RunningGateway, body: dict[str, Any], key: str = PAYER
               ) -> tuple[int, dict[str, Any]]:
    async with gw.http.post(f"{gw.url}/api/v1/images/generations", json=body,
                            headers=gw.headers(key)) as resp:
        return resp.status, await resp.json()


async def payer_ledger(gw: RunningGateway) -> tuple[int, int, list[tuple[str, int, str | None]]]:
    key = await gw.state.store.key_named("payer")
    assert key is not None
    entries = await gw.state.store.ledger(key.id, limit=1000)
    rows = [(e.kind.value, e.amount, e.job_id) for e in reversed(entries)]
    return key.balance, await gw.state.store.ledger_sum(key.id), rows


async def test_charge_on_run_refund_on_failure_nothing_on_a_400(billed: RunningGateway) -> None:
    status, body = await post(billed, {"model": "priced", "prompt": "paid for"})
    assert status == 200
    ok_id = body["data"]["taskId"]
    assert (await billed.wait_terminal(ok_id, key=PAYER))["state"] == "completed"

    status, body = await post(billed, {"model": "priced-broken", "prompt": "refunded"})
    assert status == 200
    bad_id = body["data"]["taskId"]
    assert (await billed.wait_terminal(bad_id, key=PAYER))["state"] == "failed"

    status, _ = await post(billed, {"model": "priced", "prompt": "x", "size": "bad"})
    assert status == 400

    balance, total, rows = await payer_ledger(billed)
    assert rows == [
        ("topup", 20, None),
        ("hold", -5, ok_id), ("release", 5, ok_id), ("charge", -5, ok_id),
        ("hold", -7, bad_id), ("release", 7, bad_id), ("charge", -7, bad_id),
        ("refund", 7, bad_id),
    ]
    assert balance == total == 15
    ok_job = await billed.state.store.get_job(ok_id)
    bad_job = await billed.state.store.get_job(bad_id)
    assert ok_job is not None
    assert bad_job is not None
    assert (ok_job.billing, bad_job.billing) == ("charged", "refunded")


async def test_price_follows_resolution_and_quality(billed: RunningGateway) -> None:
    for body, cost in (({"quality": "high"}, 9), ({"resolution": "2k"}, 12),
                       ({"quality": "low", "n": 2}, 4)):
        before, _, _ = await payer_ledger(billed)
        if before < cost:
            key = await billed.state.store.key_named("payer")
            assert key is not None
            await billed.state.store.topup(key.id, 50, now=0)
            before += 50
        status, data = await post(billed, {"model": "tiered", "prompt": "tier", **body})
        assert status == 200, data
        await billed.wait_terminal(data["data"]["taskId"], key=PAYER)
        after, total, _ = await payer_ledger(billed)
        assert before - after == cost
        assert after == total


async def test_insufficient_credits_is_402_before_anything_is_stored(
        billed: RunningGateway) -> None:
    status, body = await post(billed, {"model": "priced", "prompt": "too dear", "n": 5})
    assert status == 402
    assert body["code"] == 402
    assert "insufficient credits" in body["msg"]
    assert "costs 25" in body["msg"]
    balance, total, rows = await payer_ledger(billed)
    assert (balance, total, len(rows)) == (20, 20, 1)
    assert sum((await billed.state.store.count_jobs()).values()) == 0


async def test_concurrent_submits_against_a_balance_for_one(config: dict[str, Any]) -> None:
    merged = merge(config, PRICED)
    merged["keys"] = [{"name": "payer", "key": PAYER, "credits": 5}]
    async with run_gateway(merged) as gw:
        results = await asyncio.gather(*(post(gw, {"model": "priced", "prompt": f"race {i}"})
                                         for i in range(8)))
        statuses = Counter(status for status, _ in results)
        assert statuses == {200: 1, 402: 7}
        balance, total, _ = await payer_ledger(gw)
        assert balance == total == 0


async def test_unlimited_keys_are_never_refused_but_spend_is_recorded(
        config: dict[str, Any]) -> None:
    merged = merge(config, PRICED)
    merged["keys"] = [{"name": "payer", "key": PAYER, "unlimited": True}]
    async with run_gateway(merged) as gw:
        status, body = await post(gw, {"model": "priced", "prompt": "on the house"})
        assert status == 200
        await gw.wait_terminal(body["data"]["taskId"], key=PAYER)
        balance, total, _ = await payer_ledger(gw)
        assert balance == total == -5


async def test_credit_metrics(billed: RunningGateway) -> None:
    for model in ("priced", "priced-broken"):
        _, body = await post(billed, {"model": model, "prompt": "metered"})
        await billed.wait_terminal(body["data"]["taskId"], key=PAYER)
    await post(billed, {"model": "priced", "prompt": "x", "n": 10})  # 402
    async with billed.http.get(billed.url + "/metrics") as resp:
        text = await resp.text()
    assert 'muxproxy_credits_charged_total{model="priced"} 5.0' in text
    assert 'muxproxy_credits_charged_total{model="priced-broken"} 7.0' in text
    assert 'muxproxy_credits_refunded_total{model="priced-broken"} 7.0' in text
    assert 'muxproxy_requests_refused_total{reason="credits"} 1.0' in text


# --- the quality a request is billed at is the one sent upstream ----------------------

QUALITY_PAYER = "quality-payer-0000001"


async def _job_credits(gw: RunningGateway, body: dict[str, Any]) -> int:
    task_id = await gw.submit(body, key=QUALITY_PAYER)
    assert (await gw.wait_terminal(task_id, key=QUALITY_PAYER))["state"] == "completed"
    job = await gw.state.store.get_job(task_id)
    assert job is not None
    return job.credits


async def test_quality_left_to_the_upstream_is_billed_and_sent_at_the_default_tier(
        config: dict[str, Any], aiohttp_server: AiohttpServer) -> None:
    fake = await serve(FakeOpenAI(), aiohttp_server)
    merged = merge(config, {
        "providers": {"openai": {"kind": "openai", "base_url": fake.base_url,
                                 "api_key": fake.key}},
        "models": {
            "gpt-image-2": {"credits": {"1k": {"standard": 2, "medium": 10, "high": 18}},
                            "default_quality": "high",
                            "routes": [{"provider": "openai", "model": "gpt-image-2"}]},
            "dall-e-3": {"credits": {"1k": {"standard": 8, "high": 12}},
                         "default_quality": "hd",
                         "routes": [{"provider": "openai", "model": "dall-e-3"}]}}})
    merged["keys"] = [{"name": "quality-payer", "key": QUALITY_PAYER, "credits": 1000}]
    async with run_gateway(merged) as gw:
        billed = [await _job_credits(gw, {"model": model, "prompt": "p", **quality})
                  for model in ("gpt-image-2", "dall-e-3")
                  for quality in ({}, {"quality": "auto"}, {"quality": "low"})]
    sent = [call.json.get("quality") for call in fake.calls("/v1/images/generations")]
    assert billed == [18, 18, 2, 12, 12, 8]
    assert sent == ["high", "high", "low", "hd", "hd", "standard"]


async def test_a_provider_without_quality_is_billed_its_price_and_sent_none(
        config: dict[str, Any]) -> None:
    async with running(FakeGemini()) as fake:
        merged = merge(config, {
            "providers": {"gemini": {"kind": "gemini", "base_url": fake.url,
                                     "api_key": fake.api_key}},
            "models": {"nano-banana-pro": {
                "credits": {"1k": 10, "2k": 20},
                "routes": [{"provider": "gemini", "model": "gemini-3-pro-image-preview"}]}}})
        merged["keys"] = [{"name": "quality-payer", "key": QUALITY_PAYER, "credits": 1000}]
        async with run_gateway(merged) as gw:
            billed = [await _job_credits(gw, {"model": "nano-banana-pro", "prompt": "p",
                                              **fields})
                      for fields in ({}, {"quality": "auto"}, {"resolution": "2k"})]
    assert billed == [10, 10, 20]
    assert len(fake.bodies) == 3
    assert all("quality" not in json.dumps(body) for body in fake.bodies)
