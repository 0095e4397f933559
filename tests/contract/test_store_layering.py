"""The seams of the store's layering: rows map the same whether a driver hands JSON
back as text or decoded, a rule runs inside one transaction and nowhere else, and the
audit reads page through everything on every backend."""

from __future__ import annotations

import orjson
import pytest

from muxproxy.pipeline.jobs import JobState
from muxproxy.store import Store
from muxproxy.store.jobs import new_row
from muxproxy.store.rows import NEW_JOB_DEFAULTS, job_from_row
from muxproxy.store.tx import run_inline
from muxproxy.testing import ManualClock, MemoryStore
from tests.contract.test_store_contract import OWNER, T0, claim_one, new_job, store

__all__ = ["store"]  # the backend fixture, shared with the job-store contract
RESULT = {"images": [{"key": "results/a.png", "content_type": "image/png",
                      "width": 8, "height": 8}], "revised_prompt": "a fox"}


def test_a_row_maps_alike_from_json_text_and_from_decoded_json() -> None:
    row = NEW_JOB_DEFAULTS | new_row(new_job("j1")) | {
        "upstream_state": {"poll": 3}, "result": RESULT, "state": "completed"}
    as_text = {k: (orjson.dumps(v).decode() if isinstance(v, dict) else v)
               for k, v in row.items()}
    decoded, text = job_from_row(row), job_from_row(as_text)
    assert decoded == text
    assert decoded.request.prompt == "a red fox" and decoded.upstream_state == {"poll": 3}
    assert decoded.result is not None and decoded.result.images[0].key == "results/a.png"
    assert decoded.result.revised_prompt == "a fox"


async def test_a_rule_that_waits_on_anything_but_its_transaction_is_refused() -> None:
    async def waits() -> int:
        await ManualClock().sleep(1)
        return 1

    async def does_not() -> int:
        return 2

    assert run_inline(does_not()) == 2
    with pytest.raises(RuntimeError, match="transaction"):
        run_inline(waits())


async def test_a_rule_that_raises_leaves_the_memory_store_as_it_was() -> None:
    memory = MemoryStore()
    key = await memory.create_key("payer", "digest", now=T0, credits=10)
    await memory.create_job(new_job("j1", key_id=key.id, credits=4))
    with pytest.raises(Exception, match="duplicate"):
        await memory.create_job(new_job("j1", key_id=key.id, credits=4))
    assert await memory.ledger_sum(key.id) == 6 == (await memory.get_key(key.id)).balance  # type: ignore[union-attr]
    assert len(await memory.ledger(key.id)) == 2


async def test_scans_page_through_every_job_and_delivery(store: Store) -> None:
    ids = [f"j{n:02d}" for n in range(7)]
    for job_id in ids:
        job = await store.create_job(new_job(job_id, callback="https://hooks.example.com/"))
        await store.transition(job, JobState.PENDING, JobState.FAILED, now=T0,
                               fail_code="x", fail_msg="gave up")
    seen, after = [], None
    while page := await store.scan_jobs(after=after, limit=3):
        seen += [j.id for j in page]
        after = page[-1].id
    assert seen == ids
    assert [d.job_id for d in await store.scan_deliveries(after="j04", limit=10)] == [
        "j05", "j06"]


async def test_a_move_returns_the_same_job_whether_the_caller_knew_it_or_not(
        store: Store) -> None:
    for job_id in ("known", "by-id"):
        await store.create_job(new_job(job_id))
    known = await claim_one(store, "known")  # leases both
    fast = await store.transition(known, JobState.PENDING, JobState.PROCESSING, now=T0 + 1,
                                  owner=OWNER, upstream_state={"n": 1}, result=None)
    read = await store.transition("by-id", JobState.PENDING, JobState.PROCESSING,
                                  now=T0 + 1, owner=OWNER, upstream_state={"n": 1},
                                  result=None)
    assert fast == await store.get_job("known")
    assert read == await store.get_job("by-id")
    assert {**vars(fast), "id": "by-id"} == vars(read)
