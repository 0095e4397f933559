"""The surfaces' one entry point: validate against the model's route, store inputs,
create the job, wake the scheduler; and render a job's result links."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from muxproxy import images
from muxproxy.clock import Clock, now_ms
from muxproxy.errors import InvalidRequest, NotFound
from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.jobs import Job, NewJob
from muxproxy.metrics import Metrics
from muxproxy.pricing import check_capabilities, price
from muxproxy.providers.base import Provider
from muxproxy.providers.errors import Unsupported
from muxproxy.settings import ModelSettings, Settings
from muxproxy.signing import UrlSigner
from muxproxy.storage import BlobStorage
from muxproxy.store import ApiKey, Store
from muxproxy.validation import UploadedImage


def new_job_id() -> str:
    return secrets.token_urlsafe(15)


@dataclass(frozen=True)
class Submission:
    """A parsed create request, before anything is stored."""

    model: str
    request: GenerationRequest
    client_params: Mapping[str, Any]
    uploads: Sequence[UploadedImage] = ()
    mask_upload: UploadedImage | None = None
    callback_url: str | None = None


class Gateway:
    def __init__(self, settings: Settings, store: Store, storage: BlobStorage,
                 providers: Mapping[str, Provider], signer: UrlSigner, clock: Clock,
                 metrics: Metrics, wake: Callable[[], None], *,
                 check_callback: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.providers = providers
        self.signer = signer
        self.clock = clock
        self.metrics = metrics
        self._wake = wake
        self._check_callback = check_callback

    def model(self, model_id: str) -> ModelSettings:
        try:
            return self.settings.models[model_id]
        except KeyError:
            raise InvalidRequest(f"unknown model {model_id!r}", param="model") from None

    async def submit(self, key: ApiKey, surface: str, submission: Submission) -> Job:
        model = self.model(submission.model)
        route = model.routes[0]
        request = submission.request
        check_capabilities(model, request)
        if submission.callback_url is not None and self._check_callback is not None:
            await self._check_callback(submission.callback_url)
        credits = price(model, request)
        try:
            self.providers[route.provider].check(request, route.model, route.params)
        except Unsupported as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        job_id = new_job_id()
        refs = [ref for ref in request.images if ref.url is not None]
        for i, upload in enumerate(submission.uploads):
            refs.append(await self._store_input(job_id, f"image{i}", upload))
        mask = request.mask
        if submission.mask_upload is not None:
            mask = await self._store_input(job_id, "mask", submission.mask_upload)
        request = replace(request, images=tuple(refs), mask=mask)
        now = now_ms(self.clock)
        job = await self.store.create_job(NewJob(
            id=job_id, key_id=key.id, surface=surface, model=model.id, request=request,
            client_params=submission.client_params, provider=route.provider,
            upstream_model=route.model, callback_url=submission.callback_url, created_at=now,
            deadline_at=now + int(self.settings.jobs.deadline_seconds * 1000), credits=credits))
        self.metrics.job_transitions.labels(job.model, job.provider, job.state).inc()
        self._wake()
        return job

    async def _store_input(self, job_id: str, name: str, upload: UploadedImage) -> ImageRef:
        key = f"inputs/{job_id}/{name}.{images.EXTENSIONS[upload.content_type]}"
        await self.storage.put(key, upload.data, upload.content_type)
        return ImageRef(blob=key, content_type=upload.content_type)

    async def job_for(self, key: ApiKey, job_id: str) -> Job:
        """The caller's own job; another key's job is indistinguishable from none."""
        job = await self.store.get_job(job_id, key_id=key.id) if job_id else None
        if job is None:
            raise NotFound("task not found")
        return job

    def result_urls(self, job: Job) -> list[str]:
        if job.result is None:
            return []
        return [self.signer.url(image.key) for image in job.result.images]
