"""Helpers for adapter-level tests: build a provider against a fake, build a Call,
serve a fake, and a gateway config routing models to it."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pytest_aiohttp import AiohttpServer

from muxproxy.clock import SystemClock
from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.providers.base import Call, Provider, Reference
from muxproxy.settings import ProviderSettings
from tests.fakes.openai import FakeImagesAPI
from tests.support.gateway import base_config, merge

P = TypeVar("P", bound=Provider)
F = TypeVar("F", bound=FakeImagesAPI)


async def serve(fake: F, aiohttp_server: AiohttpServer) -> F:
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))
    return fake


def make_provider(cls: type[P], fake: FakeImagesAPI, http: aiohttp.ClientSession, *,
                  key: str | None = None, name: str = "upstream") -> P:
    settings = ProviderSettings(name=name, kind=cls.kind, base_url=fake.base_url,
                                api_key=fake.key if key is None else key, timeout_seconds=5)
    return cls(settings, http, SystemClock())


def make_call(model: str, *, params: Mapping[str, Any] | None = None,
              refs: tuple[Reference, ...] = (), mask: Reference | None = None,
              prompt: str = "a lighthouse at dusk", **fields: Any) -> Call:
    """A Call as the runner builds it: request.images mirror the references."""
    request = GenerationRequest(
        prompt=prompt, images=tuple(_image_ref(ref, i) for i, ref in enumerate(refs)),
        mask=_image_ref(mask, 99) if mask is not None else None, **fields)
    return Call(job_id="job-1", request=request, upstream_model=model, params=params or {},
                images=refs, mask=mask)


def _image_ref(ref: Reference, index: int) -> ImageRef:
    if ref.data is not None:
        return ImageRef(blob=f"inputs/job-1/image{index}.png", content_type=ref.content_type)
    return ImageRef(url=ref.url)


def data_ref(data: bytes, content_type: str = "image/png") -> Reference:
    return Reference(url=None, data=data, content_type=content_type)


def gateway_config(tmp_path: Path, provider: Mapping[str, Any],
                   models: Mapping[str, str], **jobs: Any) -> dict[str, Any]:
    """The test gateway with one upstream named ``upstream`` serving ``models``
    (public id -> upstream model)."""
    return merge(base_config(tmp_path), {
        "providers": {"upstream": dict(provider)},
        "models": {public: {"routes": [{"provider": "upstream", "model": upstream}]}
                   for public, upstream in models.items()},
        "jobs": jobs,
    })


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
