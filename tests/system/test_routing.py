"""Routes, fallback and the per-provider circuit breaker."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import aiohttp

from muxproxy.clock import ManualClock
from muxproxy.pipeline.breaker import Circuit, CircuitBreaker
from muxproxy.providers import build_providers
from muxproxy.providers.demo import DemoProvider
from muxproxy.providers.openai_compatible import OpenAICompatibleProvider
from muxproxy.settings import parse_settings
from tests.support.gateway import RunningGateway, base_config, merge, run_gateway
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
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


async def test_on_the_shipped_config_a_provider_left_without_its_key_is_skipped(
        tmp_path: Path) -> None:
    # config.toml names every hosted provider's key as ${VAR:-}: unset, the key is
    # empty, and models routed only there answer 400 at once instead of making
    # jobs that fail upstream for want of a key.
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    here = base_config(tmp_path)
    config = merge(shipped, {name: here[name] for name in ("database", "storage", "keys")})
    async with run_gateway(config) as gateway:
        usable = {name for name, p in gateway.state.providers.items() if p.configured}
        assert usable == {"demo", "demo-queue"}
        for model in ("gpt-image-2", "gpt-image-2-lite", "grok-image/grok-4.2-image",
                      "nano-banana"):
            async with gateway.http.post(
                    f"{gateway.url}/api/v1/images/generations", headers=gateway.headers(),
                    json={"model": model, "prompt": "a fox"}) as resp:
                body = await resp.json()
            assert (resp.status, body["code"]) == (400, 400), body
            assert "have no API key configured" in body["msg"], body
        assert (await gateway.wait_terminal(
            await gateway.submit({"model": "demo-image", "prompt": "a fox"})))["state"] \
            == "completed"


async def test_an_openai_compatible_server_named_without_a_key_needs_none(
        http: aiohttp.ClientSession) -> None:
    settings = parse_settings({"server": {"secret": "0123456789abcdef"}, "providers": {
        "local": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"},
        "unset": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1",
                  "api_key": "${LOCAL_KEY:-}"},
        "hosted": {"kind": "openai"},
        "keyed": {"kind": "openai", "api_key": "${OPENAI_API_KEY}"},
    }}, {"OPENAI_API_KEY": "sk-test"})
    providers = build_providers(settings.providers, http, ManualClock())
    assert {n: p.configured for n, p in providers.items()} == {
        "local": True, "unset": False, "hosted": False, "keyed": True}
    local, keyed = providers["local"], providers["keyed"]
    assert isinstance(local, OpenAICompatibleProvider)
    assert isinstance(keyed, OpenAICompatibleProvider)
    assert local.auth_headers() == {}  # no empty "Bearer " either
    assert keyed.auth_headers() == {"Authorization": "Bearer sk-test"}
