"""What the provider tests share: an adapter built against its fake, the calls and
handles the runner would give it, and a gateway routing public models to it."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from muxproxy.clock import SystemClock
from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.providers.base import (
    Call,
    Finished,
    Handle,
    PollOutcome,
    Provider,
    Reference,
    Submitted,
    UpstreamError,
)
from muxproxy.settings import ProviderSettings
from tests.fakes.openai import FakeImagesAPI
from tests.fakes.scripted import Fake, eventually
from tests.fakes.scripted import serve as serve_fake
from tests.support.gateway import RunningGateway, base_config, merge, run_gateway

P = TypeVar("P", bound=Provider)
F = TypeVar("F", bound=FakeImagesAPI)
S = TypeVar("S", bound=Fake)

JOB_ID = "job-1"


async def serve(fake: F, aiohttp_server: AiohttpServer) -> F:
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))
    return fake


async def served(fake: S, aiohttp_server: AiohttpServer) -> S:
    """``fake`` (a queue-style fake: fal, Replicate, task) listening on loopback."""
    await serve_fake(fake, aiohttp_server)
    return fake


def arrange(fake: object, setup: dict[str, Any], key: str | None = None) -> str | None:
    """Give ``fake`` a scenario's attributes; the API key the scenario names, else ``key``."""
    key = setup.pop("key", key)
    for name, value in setup.items():
        setattr(fake, name, value)
    return key


def provider_for(cls: type[P], http: aiohttp.ClientSession, *, base_url: str,
                 key: str | None, name: str = "upstream", timeout_seconds: float = 5,
                 **options: Any) -> P:
    """An adapter of ``cls`` as the gateway builds one from its settings."""
    settings = ProviderSettings(name=name, kind=cls.kind, base_url=base_url, api_key=key,
                                timeout_seconds=timeout_seconds, options=options)
    return cls(settings, http, SystemClock())


def make_provider(cls: type[P], fake: FakeImagesAPI, http: aiohttp.ClientSession, *,
                  key: str | None = None, name: str = "upstream") -> P:
    return provider_for(cls, http, base_url=fake.base_url,
                        key=fake.key if key is None else key, name=name)


def call_for(request: GenerationRequest, model: str, images: tuple[Reference, ...] = (),
             params: Mapping[str, Any] | None = None, mask: Reference | None = None) -> Call:
    return Call(job_id=JOB_ID, request=request, upstream_model=model, params=params or {},
                images=images, mask=mask)


def make_call(model: str, *, params: Mapping[str, Any] | None = None,
              refs: tuple[Reference, ...] = (), mask: Reference | None = None,
              prompt: str = "a lighthouse at dusk", **fields: Any) -> Call:
    """A Call as the runner builds it: request.images mirror the references."""
    request = GenerationRequest(
        prompt=prompt, images=tuple(_image_ref(ref, i) for i, ref in enumerate(refs)),
        mask=_image_ref(mask, 99) if mask is not None else None, **fields)
    return call_for(request, model, refs, params, mask)


def _image_ref(ref: Reference, index: int) -> ImageRef:
    if ref.data is not None:
        return ImageRef(blob=f"inputs/{JOB_ID}/image{index}.png",
                        content_type=ref.content_type)
    return ImageRef(url=ref.url)


def handle_for(submitted: Submitted, model: str) -> Handle:
    """The handle the runner polls with after ``submitted`` was stored."""
    return Handle(job_id=JOB_ID, upstream_id=submitted.upstream_id, upstream_model=model,
                  state=submitted.state)


async def submit(provider: Provider, call: Call) -> Submitted:
    """Submit to an async upstream, which must accept the job."""
    outcome = await provider.submit(call)
    assert isinstance(outcome, Submitted), outcome
    return outcome


async def submit_error(provider: Provider, call: Call) -> UpstreamError:
    """Submit a call that must fail; the error it failed with."""
    with pytest.raises(UpstreamError) as caught:
        await provider.submit(call)
    return caught.value


async def poll_until_done(provider: Provider, handle: Handle, limit: int = 20) -> Finished:
    """Poll like the runner: keep the state a Running hands back."""
    for _ in range(limit):
        outcome: PollOutcome = await provider.poll(handle)
        if isinstance(outcome, Finished):
            return outcome
        if outcome.state is not None:
            handle = Handle(handle.job_id, handle.upstream_id, handle.upstream_model,
                            outcome.state)
    raise AssertionError("never finished")


def data_ref(data: bytes, content_type: str = "image/png") -> Reference:
    return Reference(url=None, data=data, content_type=content_type)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gateway_config(tmp_path: Path, provider: Mapping[str, Any],
                   models: Mapping[str, str | Mapping[str, Any]], *,
                   name: str = "upstream", **jobs: Any) -> dict[str, Any]:
    """The test gateway with one upstream, ``name``, serving ``models``: public id ->
    upstream model, or -> a route's fields (``model``, ``params``)."""
    def route(target: str | Mapping[str, Any]) -> dict[str, Any]:
        fields = {"model": target} if isinstance(target, str) else dict(target)
        return {"routes": [{"provider": name, **fields}]}

    return merge(base_config(tmp_path), {
        "providers": {name: dict(provider)},
        "models": {public: route(target) for public, target in models.items()},
        "jobs": jobs,
    })


async def run_job(config: dict[str, Any], body: Mapping[str, Any], *,
                  until: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Submit one job to a fresh gateway and wait for its end: the task as answered.
    With ``until``, the gateway stays up until that holds too (a cancel sent after
    the end, say)."""
    async with run_gateway(config) as gateway:
        task = await gateway.wait_terminal(await gateway.submit(body))
        if until is not None:
            async def holds() -> bool:
                return until()
            await eventually(holds)
        return task


@asynccontextmanager
async def accepted_job(config: dict[str, Any], body: Mapping[str, Any]
                       ) -> AsyncIterator[tuple[RunningGateway, str, str]]:
    """A gateway with one job submitted and taken by the upstream: the gateway, the
    task id and the upstream's id. The gateway stops when the block ends."""
    async with run_gateway(config) as gateway:
        task_id = await gateway.submit(body)
        yield gateway, task_id, await upstream_id_of(gateway, task_id)


async def job_end(config: dict[str, Any], task_id: str) -> dict[str, Any]:
    """A fresh gateway on ``config``'s database, to the end of a job it did not start."""
    async with run_gateway(config) as gateway:
        return await gateway.wait_terminal(task_id)


async def upstream_id_of(gateway: RunningGateway, task_id: str) -> str:
    """The upstream's id for a job, once the gateway has stored it."""
    async def recorded() -> str | None:
        job = await gateway.state.store.get_job(task_id)
        return job.upstream_id if job is not None else None
    return await eventually(recorded)
