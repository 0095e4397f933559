"""Routes, fallback and the per-provider circuit breaker."""

from __future__ import annotations

from typing import Any

from muxproxy.breaker import Circuit, CircuitBreaker
from muxproxy.clock import ManualClock
from muxproxy.providers.demo import DemoProvider
from tests.support.gateway import RunningGateway, merge, run_gateway
from tests.support.wait import eventually

FLAKY = {
    "providers": {
        "flaky": {"kind": "demo", "circuit_threshold": 2, "circuit_cooldown_seconds": 60,
                  "options": {"failure_rate": 1.0, "failure_kind": "transient"}},
        "steady": {"kind": "demo"},
    },
    "models": {
        "fallback": {"routes": [{"provider": "flaky", "model": "first-choice"},
                                {"provider": "steady", "model": "second-choice"}]},
        "flaky-only": {"routes": [{"provider": "flaky", "model": "only"}]},
    },
}


def state(breaker: CircuitBreaker) -> Circuit:
    """Read through a call, so the type checker does not pin the property's value."""
    return breaker.state


def demo(gateway: RunningGateway, name: str) -> DemoProvider:
    provider = gateway.state.providers[name]
    assert isinstance(provider, DemoProvider)
    return provider


async def readiness(gateway: RunningGateway) -> dict[str, Any]:
    async with gateway.http.get(gateway.url + "/readyz") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def test_transient_failures_fall_back_to_the_next_route(config: dict[str, Any]) -> None:
    flaky = merge(FLAKY, {"providers": {"flaky": {"circuit_threshold": 100}}})
    async with run_gateway(merge(config, flaky)) as gw:
        task_id = await gw.submit({"model": "fallback", "prompt": "second best"})
        task = await gw.wait_terminal(task_id)
        assert task["state"] == "completed"
        assert task["model"] == "steady/second-choice"
        # max_attempts (3) on the first route, then one call on the second.
        assert demo(gw, "flaky").calls == 3
        assert demo(gw, "steady").calls == 1
        job = await gw.state.store.get_job(task_id)
        assert job is not None
        assert (job.route_index, job.provider, job.attempts) == (1, "steady", 0)


async def test_last_route_exhausted_fails_with_the_upstream_message(
        config: dict[str, Any]) -> None:
    flaky = merge(FLAKY, {"providers": {"flaky": {"circuit_threshold": 100}}})
    async with run_gateway(merge(config, flaky)) as gw:
        task = await gw.wait_terminal(await gw.submit({"model": "flaky-only", "prompt": "x"}))
    assert task["state"] == "failed"
    assert task["failCode"] == "demo_unavailable"
    assert "503 service unavailable" in task["failMsg"]


async def test_open_circuit_sends_jobs_straight_to_the_next_route(
        config: dict[str, Any]) -> None:
    async with run_gateway(merge(config, FLAKY)) as gw:
        assert (await readiness(gw))["providers"]["flaky"] == "closed"
        first = await gw.wait_terminal(await gw.submit({"model": "fallback", "prompt": "a"}))
        assert first["model"] == "steady/second-choice"
        calls_after_first = demo(gw, "flaky").calls
        assert calls_after_first == 2  # the circuit opened at the threshold
        assert (await readiness(gw))["providers"]["flaky"] == "open"

        second = await gw.wait_terminal(await gw.submit({"model": "fallback", "prompt": "b"}))
        assert second["model"] == "steady/second-choice"
        assert demo(gw, "flaky").calls == calls_after_first  # not even tried
        async with gw.http.get(gw.url + "/metrics") as resp:
            text = await resp.text()
        assert 'muxproxy_provider_circuit_open{provider="flaky"} 1.0' in text
        assert 'muxproxy_provider_circuit_open{provider="steady"} 0.0' in text


async def test_open_circuit_without_fallback_waits_for_the_trial(
        config: dict[str, Any]) -> None:
    clock = ManualClock()
    async with run_gateway(merge(config, FLAKY), clock=clock) as gw:
        breaker = gw.state.breakers["flaky"]
        for _ in range(2):
            breaker.failure()
        assert state(breaker) is Circuit.OPEN
        task_id = await gw.submit({"model": "flaky-only", "prompt": "patient"})

        async def deferred() -> bool:
            found = await gw.state.store.get_job(task_id)
            return found is not None and found.run_after > int(clock.now() * 1000)

        await eventually(deferred, timeout=5)
        job = await gw.state.store.get_job(task_id)
        assert job is not None
        assert job.state.value == "processing"
        assert job.run_after > int(breaker.retry_at * 1000)
        assert demo(gw, "flaky").calls == 0
        # The provider recovers; after the cooldown the trial goes through.
        demo(gw, "flaky").settings.options["failure_rate"] = 0.0  # type: ignore[index]
        clock.advance(61)
        task = await gw.wait_terminal(task_id)
        assert task["state"] == "completed"
        assert state(breaker) is Circuit.CLOSED


def test_breaker_states() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        breaker.failure()
    assert breaker.allow()
    breaker.success()  # a success resets the count
    for _ in range(2):
        breaker.failure()
    assert state(breaker) is Circuit.CLOSED
    breaker.failure()
    assert state(breaker) is Circuit.OPEN
    assert not breaker.allow()
    clock.advance(10)
    assert state(breaker) is Circuit.HALF_OPEN
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # nobody else meanwhile
    breaker.failure()  # the trial failed: open again for a full cooldown
    assert state(breaker) is Circuit.OPEN
    assert breaker.retry_at == clock.now() + 10
    clock.advance(10)
    assert breaker.allow()
    breaker.success()
    assert state(breaker) is Circuit.CLOSED
    assert breaker.allow()
