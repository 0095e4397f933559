"""Cancel on the native and the ModelMux API: a job not yet finished ends as failed
with the code ``cancelled``, its credits come back, its callback is sent, and the
upstream job is cancelled on the provider's own cancel call (the fal and Replicate
fakes answer it as the real APIs do). Real gateway, real SQLite, real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from openai import AsyncOpenAI
from pytest_aiohttp import AiohttpServer

from muxproxy.clock import ManualClock, now_ms
from muxproxy.generation import GenerationRequest
from muxproxy.pipeline.jobs import Job, JobState, NewJob
from muxproxy.surfaces import SurfaceName
from tests.fakes.fal import FakeFal
from tests.fakes.replicate import FakeReplicate
from tests.fakes.scripted import Fake
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, base_config, merge, run_gateway
from tests.support.wait import eventually
from tests.support.webhooks import LOOPBACK, Receiver

PAYER = "payer-key-000000001"
CREDITS = 20
PRICE = 5


def priced(tmp_path: Path, extra: dict[str, Any]) -> dict[str, Any]:
    config = merge(base_config(tmp_path), {**LOOPBACK, **extra})
    config["keys"] = [*config["keys"], {"name": "payer", "key": PAYER, "credits": CREDITS}]
    return config


async def serve(fake: Fake, aiohttp_server: AiohttpServer,
                gate: Callable[[web.Request], Awaitable[None]] | None = None) -> None:
    """Start a fake; ``gate`` runs before each request is handled (to hold one)."""
    app = fake.app()
    if gate is not None:
        @web.middleware
        async def held(request: web.Request, handler: Any) -> web.StreamResponse:
            await gate(request)
            response: web.StreamResponse = await handler(request)
            return response
        app.middlewares.append(held)
    server = await aiohttp_server(app)
    fake.url = f"http://{server.host}:{server.port}"


async def call(gw: RunningGateway, method: str, path: str, key: str = PAYER,
               **kw: Any) -> tuple[int, Any]:
    async with gw.http.request(method, gw.url + path, headers=gw.headers(key), **kw) as resp:
        return resp.status, await resp.json()


async def job(gw: RunningGateway, job_id: str) -> Job:
    found = await gw.state.store.get_job(job_id)
    assert found is not None
    return found


async def ledger(gw: RunningGateway) -> tuple[int, list[str]]:
    key = await gw.state.store.key_named("payer")
    assert key is not None
    entries = await gw.state.store.ledger(key.id, limit=100)
    assert await gw.state.store.ledger_sum(key.id) == key.balance
    return key.balance, [e.kind.value for e in reversed(entries) if e.job_id is not None]


async def upstream_started(gw: RunningGateway, job_id: str) -> None:
    async def has_id() -> bool:
        return (await job(gw, job_id)).upstream_id is not None
    await eventually(has_id)


async def test_native_cancel_of_a_running_fal_job(
        tmp_path: Path, aiohttp_server: AiohttpServer) -> None:
    fal = FakeFal(hold=True)
    await serve(fal, aiohttp_server)
    config = priced(tmp_path, {
        "providers": {"fal": {"kind": "fal", "base_url": fal.url, "api_key": fal.key}},
        "models": {"banana": {"credits": PRICE,
                              "routes": [{"provider": "fal", "model": "fal-ai/nano-banana"}]}},
    })
    async with Receiver() as receiver, run_gateway(config) as gw:
        task_id = await gw.submit({"model": "banana", "prompt": "a fox",
                                   "callback_url": receiver.url()}, key=PAYER)
        await upstream_started(gw, task_id)

        # Another key cannot see it, let alone cancel it.
        status, body = await call(gw, "POST", "/api/v1/images/generations/cancel",
                                  key=KEY_B, params={"task_id": task_id})
        assert (status, body) == (404, {"code": 404, "msg": "task not found", "data": None})

        status, body = await call(gw, "POST", "/api/v1/images/generations/cancel",
                                  json={"task_id": task_id})
        assert status == 200, body
        data = body["data"]
        assert (data["taskId"], data["state"], data["failCode"]) == (task_id, "failed",
                                                                     "cancelled")
        assert data["completeTime"] >= data["createTime"]
        assert "resultUrls" not in data

        [upstream] = fal.requests.values()
        assert upstream.canceled and fal.counts["cancel"] == 1
        stored = await job(gw, task_id)
        assert (stored.state, stored.fail_code, stored.lease_owner) == (JobState.FAILED,
                                                                        "cancelled", None)
        # Charged when it ran, refunded by the cancel: the balance is whole again.
        assert await ledger(gw) == (CREDITS, ["hold", "release", "charge", "refund"])

        [hit] = await receiver.wait_hits(1)
        assert (hit.json["data"]["taskId"], hit.json["data"]["state"],
                hit.json["data"]["failCode"]) == (task_id, "failed", "cancelled")

        # Once ended, a cancel is a conflict; polling shows the same job.
        status, body = await call(gw, "POST", "/api/v1/images/generations/cancel",
                                  params={"task_id": task_id})
        assert status == 409 and body["code"] == 409 and body["data"] is None
        assert "ended already (failed)" in body["msg"]
        assert (await gw.task(task_id, key=PAYER))["failCode"] == "cancelled"
        polls = fal.counts["status"]
        await asyncio.sleep(0.1)  # the poll interval is 10-50 ms: none comes any more
        assert fal.counts["status"] == polls


async def test_native_cancel_refuses_bad_input_in_its_shape(gateway: RunningGateway) -> None:
    for kwargs in ({}, {"data": b"[1]", "headers": {"Content-Type": "application/json"}},
                   {"json": {"task_id": 7}}):
        headers = {**gateway.headers(), **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        async with gateway.http.post(f"{gateway.url}/api/v1/images/generations/cancel",
                                     headers=headers, **kwargs) as resp:
            body = await resp.json()
            assert resp.status == 400 and body["data"] is None, body
    status, body = await call(gateway, "POST", "/api/v1/images/generations/cancel",
                              key=KEY_A, params={"task_id": "no-such-task"})
    assert status == 404 and body["msg"] == "task not found"


async def test_modelmux_cancel_of_a_queued_job_releases_its_hold(tmp_path: Path) -> None:
    clock = ManualClock()
    config = priced(tmp_path, {"models": {"priced": {
        "credits": PRICE, "routes": [{"provider": "demo", "model": "p"}]}}})
    async with run_gateway(config, clock=clock) as gw:
        payer = await gw.state.store.key_named("payer")
        assert payer is not None
        # Queued: not due for a minute on the test's clock, so no worker takes it.
        later = now_ms(clock) + 60_000
        queued = await gw.state.store.create_job(NewJob(
            id="queued-job-0001", key_id=payer.id, surface=SurfaceName.MODELMUX, model="priced",
            request=GenerationRequest(prompt="wait", aspect_ratio="1:1", resolution="1k"),
            client_params={"prompt": "wait"}, provider="demo", upstream_model="p",
            callback_url=None, created_at=later, deadline_at=later + 600_000,
            credits=PRICE))
        assert (await ledger(gw))[0] == CREDITS - PRICE

        status, body = await call(gw, "POST", f"/api/v1/generations/{queued.id}/cancel",
                                  key=KEY_A)
        assert (status, body) == (404, {"error": "generation not found", "code": "not_found"})

        status, body = await call(gw, "POST", f"/api/v1/generations/{queued.id}/cancel")
        assert status == 200, body
        assert (body["historyId"], body["status"], body["code"]) == (queued.id, "failed",
                                                                     "cancelled")
        assert body["creditsUsed"] == 0 and body["outputUrl"] is None
        assert body["errorMessage"] == "cancelled by the client"
        # Never charged: the hold is released.
        assert await ledger(gw) == (CREDITS, ["hold", "release"])

        status, body = await call(gw, "POST", f"/api/v1/generations/{queued.id}/cancel")
        assert status == 409 and body["code"] == "already_finished", body
        status, body = await call(gw, "GET", f"/api/v1/generations/{queued.id}")
        assert (body["status"], body["code"]) == ("failed", "cancelled")


async def test_modelmux_cancel_of_a_running_replicate_job(
        tmp_path: Path, aiohttp_server: AiohttpServer) -> None:
    replicate = FakeReplicate(hold=True)
    await serve(replicate, aiohttp_server)
    config = priced(tmp_path, {
        "providers": {"replicate": {"kind": "replicate", "base_url": f"{replicate.url}/v1",
                                    "api_key": replicate.key}},
        "models": {"flux": {"credits": PRICE, "routes": [
            {"provider": "replicate", "model": "black-forest-labs/flux-dev"}]}},
    })
    async with run_gateway(config) as gw:
        status, created = await call(gw, "POST", "/api/v1/generations",
                                     json={"model": "flux", "prompt": "a fox"})
        assert status == 200, created
        history_id = created["historyId"]
        await upstream_started(gw, history_id)
        status, body = await call(gw, "POST", f"/api/v1/generations/{history_id}/cancel")
        assert status == 200, body
        assert (body["status"], body["code"]) == ("failed", "cancelled")
        [prediction] = replicate.predictions.values()
        assert prediction["status"] == "canceled" and replicate.counts["cancel"] == 1
        assert await ledger(gw) == (CREDITS, ["hold", "release", "charge", "refund"])


async def test_a_finished_job_cannot_be_cancelled(gateway: RunningGateway) -> None:
    task_id = await gateway.submit({"model": "demo-image", "prompt": "done"})
    assert (await gateway.wait_terminal(task_id))["state"] == "completed"
    status, body = await call(gateway, "POST", "/api/v1/images/generations/cancel",
                              key=KEY_A, params={"task_id": task_id})
    assert status == 409 and "ended already (completed)" in body["msg"]
    status, body = await call(gateway, "POST", f"/api/v1/generations/{task_id}/cancel",
                              key=KEY_A)
    assert status == 409 and body["code"] == "already_finished"
    assert (await gateway.task(task_id))["state"] == "completed"


@pytest.mark.parametrize("held", ["submit", "result"])
async def test_a_cancel_wins_over_the_step_running_now(
        tmp_path: Path, aiohttp_server: AiohttpServer, held: str) -> None:
    """A step is inside the upstream call when the cancel comes: the cancel stands,
    the step's own write is dropped, and what the step made goes (an upstream job
    it just started is cancelled; result images it stored are deleted)."""
    await cancel_during_a_step(tmp_path, aiohttp_server, held, None)


async def test_a_cancel_wins_over_the_step_running_now_on_postgres(
        tmp_path: Path, aiohttp_server: AiohttpServer, postgres_url: str) -> None:
    await cancel_during_a_step(tmp_path, aiohttp_server, "submit", postgres_url)


async def cancel_during_a_step(tmp_path: Path, aiohttp_server: AiohttpServer, held: str,
                               database_url: str | None) -> None:
    fal = FakeFal(queued_polls=0, running_polls=0)
    entered, release = asyncio.Event(), asyncio.Event()

    async def gate(request: web.Request) -> None:
        is_submit = request.method == "POST"
        is_result = request.method == "GET" and request.path.count("/") == 4
        if (held == "submit" and is_submit) or (held == "result" and is_result):
            entered.set()
            await release.wait()

    await serve(fal, aiohttp_server, gate)
    config = priced(tmp_path, {
        "providers": {"fal": {"kind": "fal", "base_url": fal.url, "api_key": fal.key}},
        "models": {"banana": {"credits": PRICE,
                              "routes": [{"provider": "fal", "model": "fal-ai/nano-banana"}]}},
    })
    if database_url is not None:
        config["database"] = {"url": database_url, "pool_size": 4}
    async with run_gateway(config) as gw:
        task_id = await gw.submit({"model": "banana", "prompt": "a fox"}, key=PAYER)
        async with asyncio.timeout(10):
            await entered.wait()
        assert gw.state.scheduler.running(task_id)
        status, body = await call(gw, "POST", "/api/v1/images/generations/cancel",
                                  params={"task_id": task_id})
        assert status == 200 and body["data"]["failCode"] == "cancelled", body
        release.set()
        await eventually(lambda: not gw.state.scheduler.running(task_id))

        stored = await job(gw, task_id)
        assert (stored.state, stored.fail_code, stored.result) == (JobState.FAILED,
                                                                   "cancelled", None)
        assert await ledger(gw) == (CREDITS, ["hold", "release", "charge", "refund"])
        [upstream] = fal.requests.values()
        if held == "submit":
            # The upstream id came back after the cancel: that job is cancelled too.
            await eventually(lambda: upstream.canceled)
        results = tmp_path / "images" / "results"
        assert not results.exists() or not any(p.is_file() for p in results.rglob("*"))


async def test_a_waiting_openai_call_answers_at_once_when_its_job_is_cancelled(
        tmp_path: Path) -> None:
    # On the test's clock the job's next poll never comes: only the cancel ends it.
    # The SDK's default retries: the answer must tell it not to start another job.
    async with run_gateway(priced(tmp_path, {}), clock=ManualClock()) as gw, AsyncOpenAI(
            base_url=f"{gw.url}/v1", api_key=KEY_A) as client:
        waiting = asyncio.ensure_future(client.images.generate(
            model="demo-image-async", prompt="never polled"))
        alpha = await gw.state.store.key_named("alpha")
        assert alpha is not None

        async def stored() -> bool:
            return bool(await gw.state.store.list_jobs(alpha.id))
        await eventually(stored)
        [waited] = await gw.state.store.list_jobs(alpha.id)
        status, body = await call(gw, "POST", "/api/v1/images/generations/cancel",
                                  key=KEY_A, params={"task_id": waited.id})
        assert status == 200, body
        async with asyncio.timeout(5):
            with pytest.raises(openai.APIStatusError) as caught:
                await waiting
        assert caught.value.code == "cancelled"
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert [job.id for job in await gw.state.store.list_jobs(alpha.id)] == [waited.id]
        assert not gw.state.events._waiters
