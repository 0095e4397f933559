"""An Idempotency-Key bound to its job: whatever happened to the first answer (a
client timeout, a 504, a 5xx, a SIGKILL of the gateway), a retry with the same key
and body gets that job, and exactly one job is created and billed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from openai import AsyncOpenAI, DefaultAsyncHttpxClient

from muxproxy.auth import hash_key
from muxproxy.clock import ManualClock, now_ms
from muxproxy.generation import GenerationRequest
from muxproxy.idempotency import CREATE_STEP_MS, request_digest
from muxproxy.pipeline.jobs import IdempotencyClaim, Job, NewJob
from muxproxy.store import Store
from muxproxy.store import sqlite as sqlite_store
from muxproxy.store.accounts import IdempotencySuperseded, LedgerKind
from muxproxy.store.schema import MIGRATIONS
from muxproxy.store.sqlite import SqliteStore
from muxproxy.surfaces import SurfaceName
from tests.support.gateway import RunningGateway, base_config, merge, run_gateway
from tests.support.images import png_bytes
from tests.support.process import free_port, gateway_process
from tests.support.wait import eventually

PAYER = "test-key-payer-0003"
PRICE = 7
CREDITS = 100
NATIVE = "/api/v1/images/generations"
MODELMUX = "/api/v1/generations"
OPENAI = "/v1/images/generations"


def priced(tmp_path: Path, delay: float = 0.0, **surfaces: Any) -> dict[str, Any]:
    """A gateway with a priced model on a demo provider taking ``delay`` seconds."""
    config = base_config(tmp_path)
    return merge(config, {
        "keys": [*config["keys"], {"name": "payer", "key": PAYER, "credits": CREDITS}],
        "providers": {"slow": {"kind": "demo", "options": {"delay_seconds": delay}},
                      "broken": {"kind": "demo", "options": {"failure_rate": 1.0}}},
        "models": {"paid": {"credits": PRICE, "routes": [{"provider": "slow", "model": "p"}]},
                   "broken": {"routes": [{"provider": "broken", "model": "b"}]}},
        "surfaces": surfaces,
    })


async def post(gw: RunningGateway, path: str, body: dict[str, Any], idem_key: str,
               key: str = PAYER) -> tuple[int, Any, Any]:
    async with gw.http.post(gw.url + path, data=orjson.dumps(body), headers={
            "Authorization": f"Bearer {key}", "Idempotency-Key": idem_key,
            "Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(), resp.headers


async def payer_jobs(store: Store) -> list[Job]:
    key = await store.key_by_hash(hash_key(PAYER))
    assert key is not None
    return await store.list_jobs(key.id)


async def billed_once(store: Store, job: Job) -> None:
    """One hold, its release and one charge, and the balance down by the price."""
    key = await store.key_by_hash(hash_key(PAYER))
    assert key is not None
    rows = [e for e in await store.ledger(key.id) if e.kind is not LedgerKind.TOPUP]
    assert sorted((e.kind, e.amount, e.job_id) for e in rows) == sorted([
        (LedgerKind.HOLD, -PRICE, job.id), (LedgerKind.RELEASE, PRICE, job.id),
        (LedgerKind.CHARGE, -PRICE, job.id)])
    assert key.balance == CREDITS - PRICE


def idempotency_rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM idempotency")]


# -- the real SDK --------------------------------------------------------------------

async def test_sdk_timeouts_retry_into_the_same_job(tmp_path: Path) -> None:
    """openai-python gives up on a slow answer after its timeout and sends the
    request again: with the key fixed, the retries wait for the first job."""
    statuses: list[int] = []

    async def seen(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async with run_gateway(priced(tmp_path, delay=2.0)) as gw, AsyncOpenAI(
            base_url=f"{gw.url}/v1", api_key=PAYER, timeout=0.5, max_retries=8,
            http_client=DefaultAsyncHttpxClient(event_hooks={"response": [seen]})) as client:
        raw = await client.images.with_raw_response.generate(
            model="paid", prompt="worth waiting for", size="64x64",
            extra_headers={"Idempotency-Key": "sdk-timeout-1"})
        image = raw.parse()
        assert raw.retries_taken >= 1  # the first attempt timed out
        assert raw.headers["idempotent-replayed"] == "true"
        assert 409 not in statuses
        assert image.data and image.data[0].url
        async with gw.http.get(image.data[0].url) as resp:
            assert resp.status == 200
            assert (await resp.read()).startswith(b"\x89PNG")
        [job] = await payer_jobs(gw.state.store)
        assert job.id == raw.headers["x-muxproxy-job-id"]
        await billed_once(gw.state.store, job)


def process_config(path: Path, delay: float) -> Path:
    path.write_text(f"""
[server]
port = "${{MUXPROXY_PORT}}"
public_url = "${{MUXPROXY_PUBLIC_URL}}"
secret = "idempotency-crash-secret-01"
graceful_shutdown_seconds = 1
[database]
url = "sqlite:///state/jobs.db"
[storage]
url = "file://state/images"
[logging]
level = "warning"
[jobs]
lease_margin_seconds = 2  # the killed process's lease lapses within seconds
[[keys]]
name = "payer"
key = "{PAYER}"
credits = {CREDITS}
[providers.slow]
kind = "demo"
timeout_seconds = 2
options = {{ delay_seconds = {delay} }}
[models."paid"]
credits = {PRICE}
routes = [{{ provider = "slow", model = "p" }}]
""")
    return path


def db_rows(db: Path, sql: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]


async def test_a_sigkill_between_create_and_answer_keeps_one_job(tmp_path: Path) -> None:
    slow = process_config(tmp_path / "slow.toml", delay=60)
    fast = process_config(tmp_path / "fast.toml", delay=0)
    db = tmp_path / "state" / "jobs.db"
    port = free_port()
    statuses: list[int] = []

    async def seen(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async with AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=PAYER,
                           timeout=60, max_retries=8, http_client=DefaultAsyncHttpxClient(
                               event_hooks={"response": [seen]})) as client:
        async with gateway_process(slow, port) as gw:
            async def generate() -> Any:
                return await client.images.with_raw_response.generate(
                    model="paid", prompt="across a crash", size="64x64",
                    extra_headers={"Idempotency-Key": "crash-1"})

            call = asyncio.create_task(generate())
            await eventually(lambda: db.exists() and db_rows(
                db, "SELECT state FROM jobs") == [{"state": "processing"}], timeout=20)
            await gw.kill()
        async with gateway_process(fast, port):
            raw = await asyncio.wait_for(call, 60)
            image = raw.parse()
        assert raw.headers["idempotent-replayed"] == "true"
        assert statuses == [200] and image.data and image.data[0].url
    [job] = db_rows(db, "SELECT * FROM jobs")
    assert job["id"] == raw.headers["x-muxproxy-job-id"]
    assert job["state"] == "completed" and job["recoveries"] == 1
    ledger = db_rows(db, "SELECT kind, amount FROM ledger WHERE job_id IS NOT NULL")
    assert sorted((r["kind"], r["amount"]) for r in ledger) == [
        ("charge", -PRICE), ("hold", -PRICE), ("release", PRICE)]
    [key] = db_rows(db, "SELECT balance FROM api_keys")
    assert key["balance"] == CREDITS - PRICE


# -- first answers that were lost --------------------------------------------------

async def test_a_504_then_a_retry_gets_the_job(tmp_path: Path) -> None:
    clock = ManualClock()
    async with run_gateway(priced(tmp_path, delay=5, openai_wait_seconds=0.2),
                           clock=clock) as gw:
        body = {"model": "paid", "prompt": "patience", "size": "64x64"}
        status, error, headers = await post(gw, OPENAI, body, "after-504")
        assert status == 504 and error["error"]["code"] == "timeout"
        job_id = headers["x-muxproxy-job-id"]
        clock.advance(5)
        await gw.wait_terminal(job_id, PAYER)
        status, answer, headers = await post(gw, OPENAI, body, "after-504")
        assert status == 200, answer
        assert headers["x-muxproxy-job-id"] == job_id
        assert headers["Idempotent-Replayed"] == "true"
        assert answer["data"][0]["url"]
        [job] = await payer_jobs(gw.state.store)
        await billed_once(gw.state.store, job)


async def test_a_5xx_then_a_retry_gets_the_same_failed_job(tmp_path: Path) -> None:
    async with run_gateway(priced(tmp_path)) as gw:
        body = {"model": "broken", "prompt": "doomed"}
        first = await post(gw, OPENAI, body, "after-502")
        again = await post(gw, OPENAI, body, "after-502")
        assert first[0] == again[0] == 502
        assert again[1] == first[1]
        assert again[2]["x-muxproxy-job-id"] == first[2]["x-muxproxy-job-id"]
        assert again[2]["Idempotent-Replayed"] == "true"
        assert len(await payer_jobs(gw.state.store)) == 1


async def test_a_retry_after_a_hang_up_waits_for_the_same_job(tmp_path: Path) -> None:
    clock = ManualClock()
    async with run_gateway(priced(tmp_path, delay=5), clock=clock) as gw:
        body = {"model": "paid", "prompt": "hung up", "size": "64x64"}
        first = asyncio.create_task(post(gw, OPENAI, body, "hang-up"))
        await eventually(lambda: _waiters(gw, 1))
        first.cancel()  # the client goes away
        await eventually(lambda: _waiters(gw, 0))
        retry = asyncio.create_task(post(gw, OPENAI, body, "hang-up"))
        await eventually(lambda: _waiters(gw, 1))
        clock.advance(5)
        status, _, headers = await retry
        assert status == 200 and headers["Idempotent-Replayed"] == "true"
        [job] = await payer_jobs(gw.state.store)
        assert headers["x-muxproxy-job-id"] == job.id


async def _waiters(gw: RunningGateway, count: int) -> bool:
    """The payer's one job has ``count`` requests waiting for it."""
    jobs = await payer_jobs(gw.state.store)
    return len(jobs) == 1 and gw.state.events.waiting(jobs[0].id) == count


# -- replays of the native and ModelMux answers ------------------------------------

@pytest.mark.parametrize(("path", "id_field", "links"), [
    (NATIVE, ("data", "taskId"), ("data", "resultUrls")),
    (MODELMUX, ("historyId",), ("outputUrl",)),
])
async def test_replays_carry_fresh_links(tmp_path: Path, path: str, id_field: tuple[str, ...],
                                         links: tuple[str, ...]) -> None:
    clock = ManualClock()
    async with run_gateway(priced(tmp_path), clock=clock) as gw:
        body = {"model": "paid", "prompt": "linked"}
        status, first, headers = await post(gw, path, body, "links")
        assert status == 200 and "Idempotent-Replayed" not in headers
        job_id = _at(first, id_field)
        await gw.wait_terminal(job_id, PAYER)
        _, replay, headers = await post(gw, path, body, "links")
        clock.advance(600)
        _, later, _ = await post(gw, path, body, "links")
        assert _at(replay, id_field) == _at(later, id_field) == job_id
        assert headers["Idempotent-Replayed"] == "true"
        assert headers["x-muxproxy-job-id"] == job_id
        # Signed as they are answered: a later replay's link expires later.
        assert _at(replay, links) != _at(later, links)
        url = _at(later, links)
        async with gw.http.get(url[0] if isinstance(url, list) else url) as resp:
            assert resp.status == 200
            assert (await resp.read()).startswith(b"\x89PNG")
        assert len(await payer_jobs(gw.state.store)) == 1


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        data = data[name]
    return data


async def test_the_table_keeps_a_job_id_and_a_digest_never_the_image(tmp_path: Path) -> None:
    async with run_gateway(priced(tmp_path)) as gw:
        body = {"model": "paid", "prompt": "inline", "response_format": "b64_json"}
        first = await post(gw, OPENAI, body, "b64")
        again = await post(gw, OPENAI, body, "b64")
        assert first[0] == again[0] == 200
        b64 = first[1]["data"][0]["b64_json"]
        # Read again from storage, not from the table.
        assert again[1]["data"][0]["b64_json"] == b64
        [row] = idempotency_rows(tmp_path / "muxproxy.db")
        assert row["job_id"] == first[2]["x-muxproxy-job-id"]
        assert len(row["request_hash"]) == 64
        assert not any(isinstance(v, str | bytes) and len(v) > 100 for v in row.values())
        assert not any(b64[:40] in str(v) for v in row.values())


# -- the 409 window, and what a crash leaves behind -------------------------------------

async def test_409_only_while_the_first_request_creates_its_job(tmp_path: Path) -> None:
    clock = ManualClock()
    async with run_gateway(priced(tmp_path), clock=clock) as gw:
        store = gw.state.store
        key = await store.key_by_hash(hash_key(PAYER))
        assert key is not None
        body = {"model": "paid", "prompt": "in the create step"}
        # A request of this process that has reserved the key and not yet stored
        # its job: a retry is told to come back.
        claim = await store.idempotency_begin(
            key.id, "window", await _digest_of(gw, body), now=now_ms(clock),
            ttl_ms=86_400_000, owner=gw.state.scheduler.owner, create_step_ms=CREATE_STEP_MS)
        assert isinstance(claim, IdempotencyClaim)
        status, error, _ = await post(gw, NATIVE, body, "window")
        assert status == 409 and error["code"] == 409
        # Once its create step is overdue, the retry takes the key over.
        clock.advance(CREATE_STEP_MS / 1000)
        status, answer, _ = await post(gw, NATIVE, body, "window")
        assert status == 200
        [job] = await payer_jobs(store)
        assert job.id == answer["data"]["taskId"]
        # ...and the request it overtook could not bind a second job to the key.
        with pytest.raises(IdempotencySuperseded):
            await store.create_job(NewJob(
                id="overtaken", key_id=key.id, surface=SurfaceName.NATIVE, model="paid",
                request=GenerationRequest(prompt="late"), client_params={},
                provider="slow", upstream_model="p", callback_url=None,
                created_at=now_ms(clock), deadline_at=now_ms(clock) + 60_000,
                credits=PRICE, idempotency=claim))
        assert (await post(gw, NATIVE, body, "window"))[1]["data"]["taskId"] == job.id
        assert len(await payer_jobs(store)) == 1
        await billed_once(store, job)


async def test_another_process_reservation_is_taken_over_once_its_lease_lapsed(
        tmp_path: Path) -> None:
    clock = ManualClock()
    async with run_gateway(priced(tmp_path), clock=clock) as gw:
        store = gw.state.store
        key = await store.key_by_hash(hash_key(PAYER))
        assert key is not None
        body = {"model": "paid", "prompt": "crashed mid-create"}
        await store.idempotency_begin(
            key.id, "orphan", await _digest_of(gw, body), now=now_ms(gw.state.clock),
            ttl_ms=86_400_000, owner="replica-2:1:abcd", create_step_ms=CREATE_STEP_MS)
        # Another replica may be creating the job right now: in progress, as for a
        # request of this process...
        status, error, _ = await post(gw, NATIVE, body, "orphan")
        assert status == 409 and error["code"] == 409
        assert await payer_jobs(store) == []
        # ...until the reservation's lease lapses (that replica died mid-create).
        clock.advance(CREATE_STEP_MS / 1000)
        status, answer, headers = await post(gw, NATIVE, body, "orphan")
        assert status == 200 and "Idempotent-Replayed" not in headers
        [job] = await payer_jobs(store)
        assert job.id == answer["data"]["taskId"]
        assert (await post(gw, NATIVE, body, "orphan"))[1]["data"]["taskId"] == job.id


async def _digest_of(gw: RunningGateway, body: dict[str, Any]) -> str:
    return await request_digest(NATIVE, "application/json", orjson.dumps(body),
                                gw.settings.limits.max_body_bytes)


# -- what counts as the same request, and what keeps no binding ---------------------

async def test_a_form_resent_with_a_new_boundary_is_the_same_request(tmp_path: Path) -> None:
    """An SDK rebuilds a multipart body on each retry, with a new boundary."""
    async with run_gateway(priced(tmp_path)) as gw:
        answers = []
        for prompt in ("edit me", "edit me", "edit me differently"):
            form = aiohttp.FormData()
            form.add_field("model", "paid")
            form.add_field("prompt", prompt)
            form.add_field("image", png_bytes(), filename="in.png", content_type="image/png")
            async with gw.http.post(f"{gw.url}/v1/images/edits", data=form, headers={
                    "Authorization": f"Bearer {PAYER}", "Idempotency-Key": "edit"}) as resp:
                answers.append((resp.status, resp.headers))
        assert [status for status, _ in answers] == [200, 200, 422]
        assert answers[1][1]["Idempotent-Replayed"] == "true"
        assert answers[1][1]["x-muxproxy-job-id"] == answers[0][1]["x-muxproxy-job-id"]
        assert len(await payer_jobs(gw.state.store)) == 1


async def test_a_refusal_before_any_job_keeps_no_binding(tmp_path: Path) -> None:
    config = priced(tmp_path)
    config["keys"][-1]["credits"] = PRICE - 1
    async with run_gateway(config) as gw:
        body = {"model": "paid", "prompt": "too dear"}
        status, error, _ = await post(gw, NATIVE, body, "short")
        assert status == 402, error
        assert idempotency_rows(tmp_path / "muxproxy.db") == []
        payer = await gw.state.store.key_by_hash(hash_key(PAYER))
        assert payer is not None
        await gw.state.store.topup(payer.id, 1, now=now_ms(gw.state.clock))
        status, answer, headers = await post(gw, NATIVE, body, "short")
        assert status == 200 and "Idempotent-Replayed" not in headers
        [job] = await payer_jobs(gw.state.store)
        assert job.id == answer["data"]["taskId"]


async def test_upgrading_keeps_bound_jobs_and_drops_stored_bodies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written before keys were bound to jobs held whole response bodies."""
    path = tmp_path / "old.db"
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", MIGRATIONS[:3])
    old = SqliteStore(path)
    await old.open()
    await old.create_job(NewJob(
        id="job-1", key_id="k", surface=SurfaceName.NATIVE, model="m",
        request=GenerationRequest(prompt="p"), client_params={}, provider="demo",
        upstream_model="m", callback_url=None, created_at=1, deadline_at=2))
    await old.aclose()
    bodies = [("native", b'{"code":200,"msg":"success","data":{"taskId":"job-1"}}'),
              ("openai", b'{"data":[{"b64_json":"iVBORw0KGgo="}]}'),
              ("gone", b'{"historyId":"no-such-job"}')]
    with sqlite3.connect(path) as conn:
        for idem_key, body in bodies:
            conn.execute("INSERT INTO idempotency VALUES ('k', ?, 'h', 200, "
                         "'application/json', ?, 1, 9999999999999)", (idem_key, body))
    monkeypatch.undo()
    store = SqliteStore(path)
    await store.open()
    await store.aclose()
    assert idempotency_rows(path) == [{
        "key_id": "k", "idem_key": "native", "request_hash": "h", "job_id": "job-1",
        "claim": None, "owner": None, "created_at": 1, "expires_at": 9999999999999}]
