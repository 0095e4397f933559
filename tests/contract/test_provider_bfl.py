"""The BFL adapter against a fake BFL API whose polling URLs live on another server:
translation per model family, polling, fan-out, failures, errors, refusals, and
whole jobs through the task API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from muxproxy.clock import SystemClock
from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.providers.base import (
    Call,
    Finished,
    Handle,
    ImageLink,
    Reference,
    Running,
    Submitted,
    Unsupported,
    UpstreamError,
)
from muxproxy.providers.bfl import BflProvider, family_for, pixel_size
from muxproxy.settings import ProviderSettings
from tests.fakes.bfl import FakeBFL, running
from tests.fakes.images import solid
from tests.support.gateway import run_gateway
from tests.support.provider_calls import (
    b64,
    call_for,
    gateway_config,
    handle_for,
    poll_until_done,
    provider_for,
    run_job,
    submit,
    submit_error,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBFL]:
    async with running(FakeBFL(pending_polls=2)) as served:
        yield served


def provider(fake: FakeBFL, http: aiohttp.ClientSession, key: str | None = None
             ) -> BflProvider:
    return provider_for(BflProvider, http, base_url=fake.url,
                        key=fake.api_key if key is None else key, name="bfl")


def call(request: GenerationRequest, model: str = "flux-2-pro",
         images: tuple[Reference, ...] = (), params: dict[str, Any] | None = None) -> Call:
    return call_for(request, model, images, params)


def handle(submitted: Submitted, model: str = "flux-2-pro") -> Handle:
    return handle_for(submitted, model)


async def test_flux2_body_sizes_references_and_passthrough(
        fake: FakeBFL, http: aiohttp.ClientSession) -> None:
    uploaded = solid((1, 2, 3))
    request = GenerationRequest(prompt="a red kite", size=(1000, 600), output_format="png",
                                images=(ImageRef(blob="b"), ImageRef(url="https://x/y.png")),
                                extra={"seed": 7, "safety_tolerance": 2, "not_bfl": 1})
    refs = (Reference(url=None, data=uploaded, content_type="image/png"),
            Reference(url="https://example.com/ref.png", data=None, content_type=None))
    submitted = await submit(provider(fake, http),
                             call(request, images=refs, params={"prompt_upsampling": True}))

    [task] = fake.order
    assert task.body == {"prompt": "a red kite", "width": 992, "height": 608,
                         "input_image": b64(uploaded),
                         "input_image_2": "https://example.com/ref.png",  # BFL fetches it
                         "output_format": "png", "seed": 7, "safety_tolerance": 2,
                         "prompt_upsampling": True}
    assert submitted.upstream_id == task.id
    [state] = submitted.state["tasks"]
    assert state == {"id": task.id, "polling_url": f"{fake.poll_url}/v1/get_result?id={task.id}"}
    assert not state["polling_url"].startswith(fake.url)


@pytest.mark.parametrize(("request_", "expected"), [
    (GenerationRequest(prompt="p", aspect_ratio="16:9"), {"aspect_ratio": "16:9"}),
    (GenerationRequest(prompt="p", size=(1360, 768)), {"aspect_ratio": "85:48"}),
    (GenerationRequest(prompt="p", aspect_ratio="auto"), {}),
    (GenerationRequest(prompt="p"), {}),
])
async def test_kontext_takes_aspect_ratio(fake: FakeBFL, http: aiohttp.ClientSession,
                                          request_: GenerationRequest,
                                          expected: dict[str, str]) -> None:
    await submit(provider(fake, http), call(request_, "flux-kontext-pro"))
    assert fake.order[0].body == {"prompt": "p", **expected}


async def test_flux11_fits_pixels_and_sends_image_prompt_as_base64(
        fake: FakeBFL, http: aiohttp.ClientSession) -> None:
    hosted = solid((7, 7, 7), "JPEG")
    # Fetched by the runner already; FLUX1.1 takes only base64, so the bytes go.
    ref = Reference(url="https://cdn.example/ref.jpeg", data=hosted, content_type="image/jpeg")
    await submit(provider(fake, http), call(
        GenerationRequest(prompt="p", aspect_ratio="16:9", resolution="2k",
                          images=(ImageRef(url="u"),)),
        "flux-pro-1.1", images=(ref,)))
    # 2k 16:9 is 2736x1536: scaled into FLUX1.1's 1440 limit, in multiples of 32.
    assert fake.order[0].body == {"prompt": "p", "width": 1440, "height": 800,
                                  "image_prompt": b64(hosted)}


@pytest.mark.parametrize(("model", "request_", "expected"), [
    ("flux-2-pro", GenerationRequest(prompt="p", aspect_ratio="16:9", resolution="4k"),
     (2736, 1536)),  # 4 MP at most, the ratio kept
    ("flux-2-pro", GenerationRequest(prompt="p", aspect_ratio="1:1"), (1024, 1024)),
    ("flux-2-pro", GenerationRequest(prompt="p", size=(1000, 600)), (992, 608)),
    ("flux-pro-1.1", GenerationRequest(prompt="p", resolution="1k"), (1024, 1024)),
    ("flux-pro-1.1", GenerationRequest(prompt="p", aspect_ratio="9:16", resolution="4k"),
     (800, 1440)),
    ("flux-pro-1.1", GenerationRequest(prompt="p", size=(200, 200)), (256, 256)),
])
def test_pixel_sizes_fit_the_family(model: str, request_: GenerationRequest,
                                    expected: tuple[int, int]) -> None:
    assert pixel_size(request_, family_for(model)) == expected


async def test_pending_then_ready(fake: FakeBFL, http: aiohttp.ClientSession) -> None:
    bfl = provider(fake, http)
    h = handle(await submit(bfl, call(GenerationRequest(prompt="a calm lake"))))
    assert await bfl.poll(h) == Running()
    assert await bfl.poll(h) == Running()
    task = fake.order[0]
    assert await bfl.poll(h) == Finished(
        images=(ImageLink(f"{fake.poll_url}/results/{task.id}/sample.jpeg"),),
        revised_prompt="a calm lake")
    assert (fake.submits, fake.polls) == (1, 3)


async def test_n_fans_out_and_finishes_when_all_are_ready(
        fake: FakeBFL, http: aiohttp.ClientSession) -> None:
    bfl = provider(fake, http)
    submitted = await submit(bfl, call(GenerationRequest(prompt="p", n=2, extra={"seed": 10})))
    assert fake.submits == 2
    assert sorted(t.body["seed"] for t in fake.order) == [10, 11]
    ids = [t["id"] for t in submitted.state["tasks"]]
    assert sorted(ids) == sorted(fake.tasks) and submitted.upstream_id == ",".join(ids)
    finished = await poll_until_done(bfl, handle(submitted))
    assert finished.images == tuple(
        ImageLink(f"{fake.poll_url}/results/{task_id}/sample.jpeg") for task_id in ids)
    assert fake.polls == 2 * 3


async def test_ready_tasks_are_not_polled_again(fake: FakeBFL,
                                                http: aiohttp.ClientSession) -> None:
    bfl = provider(fake, http)
    submitted = await submit(bfl, call(GenerationRequest(prompt="p", n=2)))
    first, second = submitted.state["tasks"]
    done = {**first, "sample": "https://delivery.example/first.jpeg"}
    h = Handle("job-1", submitted.upstream_id, "flux-2-pro", {"tasks": [done, second]})
    assert await bfl.poll(h) == Running()
    assert fake.tasks[second["id"]].polls == 1 and fake.tasks[first["id"]].polls == 0
    fake.pending_polls = 0
    finished = await bfl.poll(h)
    assert isinstance(finished, Finished)
    assert finished.images[0] == ImageLink("https://delivery.example/first.jpeg")


async def test_progress_is_kept_in_the_state(fake: FakeBFL,
                                             http: aiohttp.ClientSession) -> None:
    bfl = provider(fake, http)
    submitted = await submit(bfl, call(GenerationRequest(prompt="p", n=2)))
    first = submitted.state["tasks"][0]
    fake.tasks[first["id"]].polls = fake.pending_polls  # the first is ready at the next poll
    outcome = await bfl.poll(handle(submitted))
    assert isinstance(outcome, Running) and outcome.state is not None
    assert [("sample" in t) for t in outcome.state["tasks"]] == [True, False]


@pytest.mark.parametrize(("outcome", "code", "fragments"), [
    ("error", "generation_failed", ["failed to generate", "'Error'"]),
    ("request_moderated", "content_moderated", ["rejected the request",
                                                "Derivative Works Filter"]),
    ("content_moderated", "content_moderated", ["blocked the generated image",
                                                "Derivative Works Filter"]),
    ("lost", "task_not_found", ["does not know this task", "'Task not found'"]),
])
async def test_failed_tasks_are_permanent(fake: FakeBFL, http: aiohttp.ClientSession,
                                          outcome: str, code: str,
                                          fragments: list[str]) -> None:
    fake.pending_polls = 0
    fake.script = [outcome]
    bfl = provider(fake, http)
    h = handle(await submit(bfl, call(GenerationRequest(prompt="p"))))
    with pytest.raises(UpstreamError) as caught:
        await bfl.poll(h)
    error = caught.value
    assert (error.transient, error.code) == (False, code)
    assert error.message.startswith("bfl: ")
    for fragment in fragments:
        assert fragment in error.message


async def test_one_moderated_image_fails_the_fan_out(fake: FakeBFL,
                                                    http: aiohttp.ClientSession) -> None:
    fake.script = ["ok", "content_moderated"]
    bfl = provider(fake, http)
    h = handle(await submit(bfl, call(GenerationRequest(prompt="p", n=2))))
    with pytest.raises(UpstreamError) as caught:
        await poll_until_done(bfl, h)
    assert (caught.value.transient, caught.value.code) == (False, "content_moderated")


@pytest.mark.parametrize(("script", "status", "transient", "fragment"), [
    ("http_402", 402, False, "Insufficient credits"),
    ("http_429", 429, True, "exceeded the number of active tasks"),
    ("http_500", 500, True, "Internal Server Error"),
    ("http_503", 503, True, "503 Service Unavailable"),
])
async def test_submit_errors(fake: FakeBFL, http: aiohttp.ClientSession, script: str,
                             status: int, transient: bool, fragment: str) -> None:
    fake.script = [script]
    error = await submit_error(provider(fake, http), call(GenerationRequest(prompt="p")))
    assert (error.status, error.transient) == (status, transient)
    assert fragment in error.message


async def test_validation_error_keeps_bfls_message(fake: FakeBFL,
                                                   http: aiohttp.ClientSession) -> None:
    error = await submit_error(provider(fake, http),
                               call(GenerationRequest(prompt="p"), params={"width": 1000}))
    assert (error.status, error.transient, error.code) == (422, False, "invalid_request")
    assert error.message == "bfl: width: Input should be a multiple of 16"


async def test_wrong_key_is_permanent(fake: FakeBFL, http: aiohttp.ClientSession) -> None:
    error = await submit_error(provider(fake, http, key="nope"),
                               call(GenerationRequest(prompt="p")))
    assert (error.status, error.transient) == (403, False)
    assert error.message == "bfl: Not authenticated - Invalid Authentication"


async def test_poll_connection_failure_is_transient(http: aiohttp.ClientSession) -> None:
    bfl = BflProvider(ProviderSettings(name="bfl", kind="bfl", api_key="k",
                                       timeout_seconds=2), http, SystemClock())
    gone = {"tasks": [{"id": "t", "polling_url": "http://127.0.0.1:1/v1/get_result?id=t"}]}
    with pytest.raises(UpstreamError) as caught:
        await bfl.poll(Handle("job-1", "t", "flux-2-pro", gone))
    assert caught.value.transient


@pytest.mark.parametrize(("status", "body", "transient"), [
    (404, {"id": "t", "status": "Task not found"}, False),  # a terminal status is believed
    (502, {"id": "t", "status": "Pending"}, True),
    (502, "<html>Bad Gateway</html>", True),
    (200, "not json", True),
])
async def test_poll_http_statuses(http: aiohttp.ClientSession, status: int, body: Any,
                                  transient: bool) -> None:
    async def answer(request: web.Request) -> web.Response:
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/v1/get_result", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        bfl = BflProvider(ProviderSettings(name="bfl", kind="bfl", api_key="k",
                                           timeout_seconds=2), http, SystemClock())
        state = {"tasks": [{"id": "t", "polling_url": str(server.make_url("/v1/get_result?id=t"))}]}
        with pytest.raises(UpstreamError) as caught:
            await bfl.poll(Handle("job-1", "t", "flux-2-pro", state))
    assert caught.value.transient is transient


@pytest.mark.parametrize(("model", "request_", "param"), [
    ("flux-2-pro", GenerationRequest(prompt="p", images=(ImageRef(url="u"),),
                                     mask=ImageRef(url="m")), "mask"),
    ("flux-kontext-pro", GenerationRequest(prompt="p", images=(ImageRef(url="u"),) * 5),
     "image_urls"),
    ("flux-pro-1.1", GenerationRequest(prompt="p", images=(ImageRef(url="u"),) * 2),
     "image_urls"),
    ("flux-2-pro", GenerationRequest(prompt="p", images=(ImageRef(url="u"),) * 9),
     "image_urls"),
    ("flux-2-pro", GenerationRequest(prompt="p", output_format="webp"), "output_format"),
])
async def test_check_refuses(fake: FakeBFL, http: aiohttp.ClientSession, model: str,
                             request_: GenerationRequest, param: str) -> None:
    with pytest.raises(Unsupported) as caught:
        provider(fake, http).check(request_, model, {})
    assert caught.value.param == param


async def test_cancel_makes_no_call(fake: FakeBFL, http: aiohttp.ClientSession) -> None:
    bfl = provider(fake, http)
    h = handle(await submit(bfl, call(GenerationRequest(prompt="p"))))
    await bfl.cancel(h)
    assert (fake.submits, fake.polls) == (1, 0)


# -- whole jobs through the native task API ------------------------------------------


def bfl_config(tmp_path: Path, fake: FakeBFL, key: str | None = None) -> dict[str, Any]:
    return gateway_config(
        tmp_path, {"kind": "bfl", "base_url": fake.url, "api_key": key or fake.api_key,
                   "timeout_seconds": 5},
        {"flux-2-pro": {"model": "flux-2-pro", "params": {"safety_tolerance": 2}},
         "flux-kontext-pro": "flux-kontext-pro"},
        name="bfl")


async def download(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_job_completes_with_the_sample_image(tmp_path: Path, fake: FakeBFL) -> None:
    async with run_gateway(bfl_config(tmp_path, fake)) as gateway:
        task = await gateway.wait_terminal(await gateway.submit(
            {"model": "flux-2-pro", "prompt": "a barn owl", "size": "1024x768"}))
        assert task["state"] == "completed", task
        [url] = task["resultUrls"]
        assert await download(gateway.http, url) == fake.order[0].image
    assert fake.order[0].body == {"prompt": "a barn owl", "width": 1024, "height": 768,
                                  "safety_tolerance": 2}
    assert (fake.submits, fake.polls, fake.downloads) == (1, 3, 1)


async def test_two_images_polled_on_another_host(tmp_path: Path, fake: FakeBFL) -> None:
    async with run_gateway(bfl_config(tmp_path, fake)) as gateway:
        task = await gateway.wait_terminal(await gateway.submit(
            {"model": "flux-kontext-pro", "prompt": "two cats", "n": 2,
             "aspect_ratio": "4:3"}))
        assert task["state"] == "completed", task
        got = [await download(gateway.http, url) for url in task["resultUrls"]]
    assert sorted(got) == sorted(t.image for t in fake.order) and got[0] != got[1]
    assert fake.submits == 2
    assert fake.polls == 2 * 3 and fake.downloads == 2


@pytest.mark.parametrize(("outcome", "fragment"), [
    ("content_moderated", "moderation blocked the generated image: Derivative Works Filter"),
    ("request_moderated", "moderation rejected the request"),
    ("error", "failed to generate the image"),
])
async def test_failed_task_fails_the_job(tmp_path: Path, fake: FakeBFL, outcome: str,
                                         fragment: str) -> None:
    fake.script = [outcome]
    task = await run_job(bfl_config(tmp_path, fake), {"model": "flux-2-pro", "prompt": "p"})
    assert task["state"] == "failed"
    assert fragment in task["failMsg"]
    assert fake.submits == 1


async def test_rate_limited_submit_is_retried(tmp_path: Path, fake: FakeBFL) -> None:
    fake.script = ["http_429"]
    async with run_gateway(bfl_config(tmp_path, fake)) as gateway:
        task = await gateway.wait_terminal(
            await gateway.submit({"model": "flux-2-pro", "prompt": "p"}))
        assert task["state"] == "completed", task
        assert await download(gateway.http, task["resultUrls"][0]) == fake.order[0].image
    assert fake.submits == 2


async def test_wrong_key_fails_the_job(tmp_path: Path, fake: FakeBFL) -> None:
    task = await run_job(bfl_config(tmp_path, fake, key="wrong-key"),
                         {"model": "flux-2-pro", "prompt": "p"})
    assert task["state"] == "failed"
    assert task["failMsg"] == "bfl: Not authenticated - Invalid Authentication"
    assert fake.submits == 1
