"""One step of one job: submit or poll upstream, then record the outcome.

The scheduler hands the runner a job it has leased; the runner always leaves the
job either terminal or released with a ``run_after`` for its next step.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from muxproxy import images
from muxproxy.clock import Clock, now_ms
from muxproxy.errors import StoreUnavailable
from muxproxy.faults import InputMissing, JobFault, StorageFault
from muxproxy.fetch import download
from muxproxy.generation import ImageRef
from muxproxy.logs import get_logger
from muxproxy.metrics import Metrics
from muxproxy.pipeline.backoff import RetryPolicy, next_delay, next_poll
from muxproxy.pipeline.breaker import CircuitBreaker, provider_fault
from muxproxy.pipeline.events import JobEvents
from muxproxy.pipeline.jobs import Job, JobResult, JobState, StoredImage, evolve
from muxproxy.providers import next_route
from muxproxy.providers.base import (
    Call,
    Finished,
    Handle,
    ImageData,
    ImageLink,
    Provider,
    Reference,
    Running,
    Submitted,
    Unsupported,
    UpstreamError,
)
from muxproxy.references import Budget, ReferenceFetcher
from muxproxy.settings import Settings
from muxproxy.storage import BlobNotFound, BlobStorage, blob_key
from muxproxy.store import Billing, StaleJob, Store

log = get_logger("muxproxy.pipeline.runner")

# Waits before each new try of a write the database refused (JobRunner._retried:
# the start of a step and the record of its outcome):
# 7.5 s in all, well within a lease.
WRITE_RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0)
T = TypeVar("T")


class JobRunner:
    def __init__(self, settings: Settings, store: Store, storage: BlobStorage,
                 providers: Mapping[str, Provider], http: aiohttp.ClientSession,
                 clock: Clock, metrics: Metrics, events: JobEvents,
                 breakers: Mapping[str, CircuitBreaker], fetcher: ReferenceFetcher) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.providers = providers
        self.http = http
        self.clock = clock
        self.metrics = metrics
        self.events = events
        self.breakers = breakers
        self.retry = RetryPolicy.from_settings(settings.jobs)
        self.fetcher = fetcher

    async def run(self, job: Job, owner: str) -> bool:
        """One step of ``job``; True when it left the job terminal, so that no later
        step is due (False also when another writer changed the job first)."""
        now = now_ms(self.clock)
        if job.state is JobState.PENDING:
            pending = job
            try:
                job = await self._retried(lambda: self.store.transition(
                    pending, JobState.PENDING, JobState.PROCESSING, now=now, owner=owner,
                    release=False, started_at=now), "processing")
            except StaleJob as exc:
                # Ended since the claim (cancelled): nothing to run.
                log.info("job changed before its first step", actual=exc.actual)
                return False
            self.record(job)
        provider = self.providers[job.provider]
        breaker = self.breakers[job.provider]
        if job.upstream_id is None and not breaker.allow():
            await self._avoid_open_circuit(job, owner, breaker)
            return False
        remaining = (job.deadline_at - now) / 1000
        started = time.perf_counter()
        # Until the upstream is called, a failure is the request's or ours.
        upstream_called = False
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                if job.upstream_id is None:
                    call = await self._call(job)
                    upstream_called = True
                    outcome: Any = await provider.submit(call)
                else:
                    upstream_called = True
                    outcome = await provider.poll(self._handle(job))
                if isinstance(outcome, Finished):
                    result = await self._store_results(job, outcome)
        except JobFault as exc:
            breaker.release()
            return await self._fail(job, owner, exc.code, exc.message, cancel=False)
        except TimeoutError:
            if upstream_called:
                self._observe(provider, "timeout", started)
                breaker.failure()
            else:
                breaker.release()
            return await self._fail(job, owner, "deadline_exceeded",
                                    "job deadline exceeded before the upstream finished")
        except UpstreamError as exc:
            self._observe(provider, "transient" if exc.transient else "permanent", started)
            if provider_fault(exc):
                breaker.failure()
            else:
                breaker.release()
            return await self._on_error(job, owner, exc)
        except Unsupported as exc:
            self._observe(provider, "permanent", started)
            breaker.release()
            return await self._fail(job, owner, "unsupported", exc.message)
        except Exception:
            # A bug in an adapter must not strand the job: log it, retry like a
            # transient fault, and fail it once the attempts run out.
            log.exception("provider raised unexpectedly", provider=provider.name)
            self._observe(provider, "error", started)
            breaker.failure()
            return await self._on_error(job, owner, UpstreamError(
                f"{provider.name}: internal error in the adapter", transient=True,
                code="adapter_error"))
        self._observe(provider, "ok", started)
        breaker.success()
        return await self._advance(job, owner, outcome,
                                   result if isinstance(outcome, Finished) else None)

    async def _advance(self, job: Job, owner: str, outcome: Any,
                       result: JobResult | None) -> bool:
        now = now_ms(self.clock)
        if result is not None:
            done = await self._move(job, owner, JobState.COMPLETED, result=result.to_json(),
                                    completed_at=now, fail_code=None, fail_msg=None)
            if done is None:
                # Ended meanwhile (cancelled): no job row names these images.
                await self._delete_blobs(job, [image.key for image in result.images])
                return False
            await self.ended(done)
            return True
        if isinstance(outcome, Submitted):
            delay = next_poll(self.retry, 0)
            moved = await self._move(job, owner, JobState.PROCESSING,
                                     upstream_id=outcome.upstream_id,
                                     upstream_state=dict(outcome.state), polls=0,
                                     run_after=now + int(delay * 1000))
            if moved is None:
                # Ended while the upstream took it (cancelled): the upstream job just
                # started belongs to no one, so it is cancelled too.
                await self.cancel_upstream(evolve(job, upstream_id=outcome.upstream_id,
                                                  upstream_state=dict(outcome.state)))
        elif isinstance(outcome, Running):
            delay = next_poll(self.retry, job.polls + 1)
            changes: dict[str, Any] = {"polls": job.polls + 1,
                                       "run_after": now + int(delay * 1000)}
            if outcome.state is not None:
                changes["upstream_state"] = dict(outcome.state)
            await self._move(job, owner, JobState.PROCESSING, **changes)
        return False

    async def _on_error(self, job: Job, owner: str, exc: UpstreamError) -> bool:
        now = now_ms(self.clock)
        log.info("upstream error", provider=job.provider, transient=exc.transient,
                 code=exc.code, message=exc.message, status=exc.status)
        if not exc.transient:
            return await self._fail(job, owner, exc.code, exc.message)
        if job.upstream_id is not None:
            # The upstream has the job: keep polling (a 429 on a poll is not a
            # reason to give up or to submit elsewhere); the deadline bounds it.
            delay = next_poll(self.retry, job.polls + 1, exc.retry_after)
            await self._move(job, owner, JobState.PROCESSING, polls=job.polls + 1,
                             run_after=now + int(delay * 1000))
            return False
        attempts = job.attempts + 1
        retry_in = next_delay(self.retry, attempts, exc.retry_after)
        if retry_in is not None:
            await self._move(job, owner, JobState.PROCESSING, attempts=attempts,
                             fail_code=exc.code, fail_msg=exc.message,
                             run_after=now + int(retry_in * 1000))
            return False
        if await self._fall_back(job, owner):
            return False
        return await self._fail(job, owner, exc.code, exc.message)

    async def _avoid_open_circuit(self, job: Job, owner: str, breaker: CircuitBreaker) -> None:
        """The provider is marked down: take the next route now, or wait for the trial."""
        if await self._fall_back(job, owner):
            return
        await self._move(job, owner, JobState.PROCESSING,
                         run_after=int(breaker.retry_at * 1000) + 1)

    async def _fall_back(self, job: Job, owner: str) -> bool:
        model = self.settings.models.get(job.model)
        found = next_route(model, self.providers, after=job.route_index,
                           request=job.request) if model else None
        if found is None:
            return False
        index, route = found
        log.info("falling back to next route", from_provider=job.provider,
                 provider=route.provider, model=route.model)
        await self._move(job, owner, JobState.PROCESSING, route_index=index,
                         provider=route.provider, upstream_model=route.model, attempts=0,
                         upstream_state=None, run_after=now_ms(self.clock))
        return True

    async def _fail(self, job: Job, owner: str, code: str, message: str, *,
                    cancel: bool = True) -> bool:
        """Fail the job; ``cancel`` asks the upstream to stop working on it too."""
        now = now_ms(self.clock)
        failed = await self._move(job, owner, JobState.FAILED, fail_code=code, fail_msg=message,
                                  completed_at=now)
        if failed is None:
            return False
        await self.ended(failed)
        if cancel and failed.upstream_id is not None:
            await self.cancel_upstream(failed)
        return True

    async def cancel_upstream(self, job: Job) -> None:
        provider = self.providers.get(job.provider)
        if provider is None or job.upstream_id is None:
            return
        try:
            await provider.cancel(self._handle(job))
        except Exception:
            log.warning("upstream cancel failed", exc_info=True)

    async def _move(self, job: Job, owner: str, target: JobState, **changes: Any) -> Job | None:
        """Record the step's outcome; None when another writer changed the job first.

        A write the database refuses (locked, disk full) is tried again while the
        step still holds the lease (the scheduler renews it): let through at once,
        the job would be claimed again and its upstream call made twice."""
        return await self._retried(lambda: self._transition(job, owner, target, changes),
                                   target.value)

    async def _retried(self, write: Callable[[], Awaitable[T]], state: str) -> T:
        """``write()``, tried again on the WRITE_RETRY_SECONDS schedule while the
        database refuses it; the last refusal is raised."""
        for delay in WRITE_RETRY_SECONDS:
            try:
                return await write()
            except StoreUnavailable:
                log.warning("the database refused a job's write; trying again",
                            state=state, retry_in=delay)
                await self.clock.sleep(delay)
        return await write()

    async def _transition(self, job: Job, owner: str, target: JobState,
                          changes: Mapping[str, Any]) -> Job | None:
        try:
            return await self.store.transition(job, JobState.PROCESSING, target,
                                               now=now_ms(self.clock), owner=owner, **changes)
        except StaleJob as exc:
            log.warning("job changed under the worker", actual=exc.actual)
            return None

    async def ended(self, job: Job) -> None:
        """A job reached its end, on whichever path: record it, then delete the
        reference images uploaded with it (only its results are kept)."""
        self.record(job)
        await self._delete_blobs(job, job.request.input_keys())

    async def _delete_blobs(self, job: Job, keys: list[str]) -> None:
        for key in keys:
            try:
                await self.storage.delete(key)
            except Exception:
                # Left for the retention sweep; the job's outcome stands.
                self.metrics.storage_errors.labels("delete").inc()
                log.warning("could not delete a blob", job_id=job.id, key=key,
                            exc_info=True)

    def record(self, job: Job) -> None:
        """Count and log a job entering its state; announce it when terminal."""
        # Its start is at debug: at info a job's "job created" and its end bracket it
        # (the start time is the job's started_at), and a busy gateway logs one line
        # fewer per job.
        (log.info if job.is_terminal else log.debug)(
            "job state", job_id=job.id, state=job.state.value, model=job.model,
            provider=job.provider, fail_code=job.fail_code)
        self.metrics.job_transitions.labels(job.model, job.provider, job.state).inc()
        if job.state is JobState.PROCESSING and job.billing == Billing.CHARGED:
            self.metrics.credits_charged.labels(job.model).inc(job.credits)
        elif job.billing in (Billing.REFUNDED, Billing.RELEASED):
            self.metrics.credits_refunded.labels(job.model).inc(job.credits)
        if job.is_terminal:
            self.events.publish(job)
        if job.is_terminal and job.completed_at is not None:
            self.metrics.job_duration.labels(job.model, job.provider, job.state).observe(
                max(0, job.completed_at - job.created_at) / 1000)

    def _observe(self, provider: Provider, outcome: str, started: float) -> None:
        self.metrics.upstream_requests.labels(provider.name, outcome).inc()
        self.metrics.upstream_latency.labels(provider.name).observe(
            time.perf_counter() - started)

    async def _call(self, job: Job) -> Call:
        """The provider's call, every reference in hand: URLs fetched (and vetted)
        here, before the upstream hears of the job, uploads read back."""
        request = job.request
        budget = self.fetcher.budget()
        refs = tuple([await self._reference(ref, f"reference image {i + 1}", budget)
                      for i, ref in enumerate(request.images)])
        mask = request.mask
        return Call(job_id=job.id, request=request, upstream_model=job.upstream_model,
                    params=self._route_params(job), images=refs,
                    mask=await self._reference(mask, "the mask", budget) if mask else None,
                    on_partial=functools.partial(self.events.partial, job.id))

    def _route_params(self, job: Job) -> Mapping[str, Any]:
        model = self.settings.models.get(job.model)
        if model is None or job.route_index >= len(model.routes):
            return {}
        return model.routes[job.route_index].params

    async def _reference(self, ref: ImageRef, label: str, budget: Budget) -> Reference:
        if ref.url is not None:
            data, content_type = await self.fetcher.fetch(ref.url, label, budget)
            return Reference(url=ref.url, data=data, content_type=content_type)
        if ref.blob is None:
            raise InputMissing(f"{label} is missing")
        try:
            data = await self.storage.get(ref.blob)
        except BlobNotFound:
            raise InputMissing(f"{label}, stored at submit, is missing") from None
        except OSError:
            self._storage_failed("read", job_id=None)
            raise StorageFault(f"the gateway could not read {label} from its storage"
                               ) from None
        return Reference(url=None, data=data, content_type=ref.content_type)

    def _handle(self, job: Job) -> Handle:
        assert job.upstream_id is not None
        return Handle(job_id=job.id, upstream_id=job.upstream_id,
                      upstream_model=job.upstream_model, state=job.upstream_state)

    async def _store_results(self, job: Job, outcome: Finished) -> JobResult:
        if not outcome.images:
            raise UpstreamError(f"{job.provider}: upstream finished without an image",
                                transient=False, code="no_image")
        stored: list[StoredImage] = []
        try:
            for index, item in enumerate(outcome.images):
                stored.append(await self._store_result(job, index, item))
        except BaseException:
            # A failed step keeps no result (no job row would name it): whatever
            # ended it (an image that is not one, a failed download, a cancel), the
            # images written before go too.
            await self._delete_blobs(job, [image.key for image in stored])
            raise
        return JobResult(images=tuple(stored), revised_prompt=outcome.revised_prompt)

    async def _store_result(self, job: Job, index: int, item: ImageData | ImageLink
                            ) -> StoredImage:
        if isinstance(item, ImageData):
            data = item.data
            content_type = images.sniff(data)
            if content_type is None:
                raise UpstreamError(f"{job.provider}: upstream sent data that is not an "
                                    "image", transient=False, code="not_an_image")
        else:
            data, content_type = await download(
                self.http, item.url, max_bytes=self.settings.limits.max_download_bytes,
                timeout=self.providers[job.provider].settings.timeout_seconds)
        key = blob_key("results", job.id, job.created_at, str(index),
                       images.EXTENSIONS[content_type])
        try:
            await self.storage.put(key, data, content_type)
        except OSError:
            self._storage_failed("write", job_id=job.id)
            raise StorageFault("the gateway could not store the result image") from None
        width, height = images.dimensions(data)
        return StoredImage(key=key, content_type=content_type, width=width, height=height)

    def _storage_failed(self, operation: str, *, job_id: str | None) -> None:
        """Our own disk failed: counted, and logged with its cause for the operator
        (the client's message says only that storage failed)."""
        self.metrics.storage_errors.labels(operation).inc()
        log.error("blob storage failed", operation=operation, job_id=job_id, exc_info=True)
