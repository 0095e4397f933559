"""The job pipeline on ``muxproxy.testing``: a job runs through the real runner and
the demo provider on the memory store and the manual clock, with no database file
and no server; the store's rules (charge, callback on the job's end) come along."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from muxproxy.clock import now_ms
from muxproxy.generation import GenerationRequest
from muxproxy.metrics import Metrics
from muxproxy.pipeline.breaker import CircuitBreaker
from muxproxy.pipeline.events import JobEvents
from muxproxy.pipeline.jobs import JobState, NewJob
from muxproxy.pipeline.runner import JobRunner
from muxproxy.providers import build_providers
from muxproxy.references import ReferenceFetcher
from muxproxy.storage import open_storage
from muxproxy.surfaces import SurfaceName
from muxproxy.testing import ManualClock, MemoryStore
from tests.support.gateway import base_config, settings_from


async def test_a_priced_job_runs_to_its_end_on_the_memory_store(tmp_path: Path) -> None:
    settings = settings_from(base_config(tmp_path), 1)
    clock, store = ManualClock(), MemoryStore()
    await store.open()
    key = await store.create_key("payer", "digest", now=now_ms(clock), credits=10)
    start = now_ms(clock)
    await store.create_job(NewJob(
        id="job-1", key_id=key.id, surface=SurfaceName.NATIVE, model="demo-image",
        request=GenerationRequest(prompt="a red fox", size=(64, 64)),
        client_params={"prompt": "a red fox"}, provider="demo", upstream_model="demo-image",
        callback_url="https://hooks.example.com/cb", created_at=start,
        deadline_at=start + 600_000, credits=4))
    fetcher = ReferenceFetcher(settings.limits)
    try:
        async with aiohttp.ClientSession() as http:
            providers = build_providers(dict(settings.providers), http, clock)
            runner = JobRunner(settings, store, open_storage(settings.storage.url),
                               providers, http, clock, Metrics(), JobEvents(),
                               {name: CircuitBreaker(5, 30, clock) for name in providers},
                               fetcher)
            [claimed] = await store.claim_due("demo", start, 1, "worker", start + 60_000)
            await runner.run(claimed, "worker")  # the demo provider answers at once
    finally:
        await fetcher.aclose()
    job = await store.get_job("job-1")
    assert job is not None
    assert job.state is JobState.COMPLETED, (job.fail_code, job.fail_msg)
    assert job.result is not None and len(job.result.images) == 1
    assert job.billing == "charged" and await store.ledger_sum(key.id) == 6
    delivery = await store.get_delivery(job.id)
    assert delivery is not None and delivery.url == "https://hooks.example.com/cb"
