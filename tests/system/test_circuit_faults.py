"""A provider's circuit counts only the provider's own faults (5xx, timeouts, broken
connections). What one tenant's request brings on itself (a bad reference, a 4xx,
a 429, a moderation block) must not open the circuit for every tenant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from muxproxy.clock import ManualClock
from muxproxy.pipeline.breaker import Circuit, CircuitBreaker, provider_fault
from muxproxy.providers.base import UpstreamError
from tests.fakes.scripted import serve
from tests.fakes.task import FakeTask
from tests.support.gateway import RunningGateway, base_config, merge, run_gateway
from tests.support.references import ImageServer, allow

MODEL = "gemini-3-pro-image"


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> FakeTask:
    fake = FakeTask()
    await serve(fake, aiohttp_server)
    return fake


def one_strike(tmp_path: Path, upstream: FakeTask) -> dict[str, Any]:
    """A circuit that opens on the first fault, and one attempt per job."""
    def route(model: str) -> dict[str, Any]:
        return {"routes": [{"provider": "apimodels", "model": model}]}

    return merge(base_config(tmp_path), {
        "jobs": {"max_attempts": 1},
        "providers": {"apimodels": {"kind": "task", "base_url": upstream.url,
                                    "api_key": upstream.key, "timeout_seconds": 5,
                                    "circuit_threshold": 1,
                                    "circuit_cooldown_seconds": 600}},
        "models": {MODEL: route(MODEL), "not-upstream": route("no-such-model")},
        **allow("127.0.0.2/32"),
    })


def error(status: int, msg: str) -> dict[str, Any]:
    return {"code": status, "msg": msg, "data": None}


async def fail_one(gateway: RunningGateway, body: dict[str, Any]) -> dict[str, Any]:
    task = await gateway.wait_terminal(await gateway.submit(body))
    assert task["state"] == "failed", task
    return task


def circuit(gateway: RunningGateway) -> tuple[str, int]:
    breaker = gateway.state.breakers["apimodels"]
    return breaker.state.value, breaker.failures


@pytest.mark.parametrize("case", ["bad-reference", "400", "429", "moderation"])
async def test_the_requests_own_faults_leave_the_circuit_closed(
        tmp_path: Path, upstream: FakeTask, case: str) -> None:
    body: dict[str, Any] = {"model": MODEL, "prompt": "p"}
    async with ImageServer("127.0.0.2") as images:
        if case == "bad-reference":
            body["image_url"] = images.url("/missing.png")
        elif case == "400":
            body["model"] = "not-upstream"
        elif case == "429":
            upstream.fail("submit", 429, error(429, "Too Many Requests"),
                          headers={"Retry-After": "0"})
        else:
            upstream.fail_with = ("Content policy violation", "content_policy")
        async with run_gateway(one_strike(tmp_path, upstream)) as gateway:
            await fail_one(gateway, body)
            assert circuit(gateway) == ("closed", 0)
            upstream.fail_with = None
            # The next tenant's job still goes to the provider, and succeeds.
            task = await gateway.wait_terminal(await gateway.submit(
                {"model": MODEL, "prompt": "next"}))
            assert task["state"] == "completed", task
    if case == "bad-reference":
        assert upstream.counts["submit"] == 1  # only the next tenant's job


async def test_a_5xx_opens_the_circuit(tmp_path: Path, upstream: FakeTask) -> None:
    upstream.fail("submit", 503, error(503, "Service Unavailable"))
    async with run_gateway(one_strike(tmp_path, upstream)) as gateway:
        task = await fail_one(gateway, {"model": MODEL, "prompt": "p"})
        assert task["failCode"] == "upstream_unavailable"
        assert circuit(gateway) == ("open", 1)


@pytest.mark.parametrize(("error_", "fault"), [
    (UpstreamError("x", transient=True, status=500), True),
    (UpstreamError("x", transient=True, status=503), True),
    (UpstreamError("timed out", transient=True, code="upstream_timeout"), True),
    (UpstreamError("reset", transient=True, code="upstream_unavailable"), True),
    (UpstreamError("bad json", transient=True, status=200), True),
    (UpstreamError("x", transient=True, status=429), False),
    (UpstreamError("x", transient=True, status=408), False),
    (UpstreamError("x", transient=False, status=400), False),
    (UpstreamError("x", transient=False, status=401), False),
    (UpstreamError("blocked", transient=False, code="moderation_blocked"), False),
])
def test_provider_fault(error_: UpstreamError, fault: bool) -> None:
    assert provider_fault(error_) is fault


def test_a_trial_that_told_nothing_is_handed_back() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=2, cooldown=30, clock=clock)
    breaker.failure()
    breaker.failure()
    clock.advance(30)
    assert breaker.state is Circuit.HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.release()  # the trial job had a bad reference: no verdict on the provider
    assert (breaker.state, breaker.failures) == (Circuit.HALF_OPEN, 2)
    assert breaker.allow()  # the next job is the trial
    breaker.success()
    assert (breaker.state, breaker.failures) == (Circuit.CLOSED, 0)
