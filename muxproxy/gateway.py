"""The service layer: the one entry point of every surface (HTTP today; streaming,
MCP and a console next). It submits jobs (validated against the model's route, inputs
stored, the scheduler woken), waits for a job's end, hands out a job's result images
as bytes or as signed links, and looks jobs up for their key. Surfaces only parse,
call these, and render."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from muxproxy import images
from muxproxy.clock import Clock, now_ms
from muxproxy.errors import (
    Conflict,
    Expired,
    Forbidden,
    InsufficientCredits,
    InternalError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    StillRunning,
    StorageFailing,
)
from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.logs import get_logger
from muxproxy.metrics import Metrics
from muxproxy.pipeline.events import EndWatch, JobEvents
from muxproxy.pipeline.jobs import (
    IdempotencyClaim,
    Job,
    JobState,
    Lease,
    NewJob,
    StoredImage,
    evolve,
)
from muxproxy.pipeline.retention import results_expired
from muxproxy.pricing import billed, check_capabilities, price
from muxproxy.providers import next_route
from muxproxy.providers.base import Provider, Unsupported
from muxproxy.settings import ModelSettings, Settings
from muxproxy.shutdown import Shutdown
from muxproxy.signing import UrlSigner
from muxproxy.storage import BlobNotFound, BlobStorage, blob_key
from muxproxy.store import (
    ApiKey,
    ConcurrencyLimitReached,
    InsufficientBalance,
    StaleJob,
    Store,
)
from muxproxy.store.accounts import IdempotencySuperseded, UsageRow
from muxproxy.store.jobs import JobQuery
from muxproxy.surfaces import SurfaceName
from muxproxy.validation import UploadedImage

log = get_logger("muxproxy.gateway")
# A failed write to our own storage: when a client may try again.
STORAGE_RETRY_SECONDS = 30.0
# The fail_code of a job its client cancelled.
CANCELLED = "cancelled"


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
    # Every reference image in the client's order, URLs and uploads mixed ("combine
    # image 1 with image 2"). When empty: request.images, then uploads.
    images: Sequence[ImageRef | UploadedImage] = ()

    def ordered_images(self) -> Sequence[ImageRef | UploadedImage]:
        return self.images or (*self.request.images, *self.uploads)


class Dispatcher(Protocol):
    """The scheduler, as the gateway sees it."""

    def reserve(self, provider: str) -> Lease | None:
        """A free slot of ``provider`` for a job about to be created, if there is one."""

    def unreserve(self, provider: str) -> None:
        """The job the slot was for was not created."""

    def launch(self, job: Job) -> None:
        """Run a job created with a reserved lease, now."""

    def wake(self) -> None:
        """A job was queued: look for work."""

    def running(self, job_id: str) -> bool:
        """Whether a step of the job runs in this process now."""

    async def ended_elsewhere(self, job: Job) -> None:
        """A job the gateway ended (a cancel): recorded and announced like any end,
        its inputs deleted, and its upstream job cancelled where the provider can."""


class Gateway:
    def __init__(self, settings: Settings, store: Store, storage: BlobStorage,
                 providers: Mapping[str, Provider], signer: UrlSigner, clock: Clock,
                 metrics: Metrics, dispatcher: Dispatcher, events: JobEvents,
                 shutdown: Shutdown, *,
                 check_callback: Callable[[str, Sequence[str]], Awaitable[None]] | None = None,
                 check_reference: Callable[[str, str, str], Awaitable[None]] | None = None,
                 recheck_seconds: float | None = None) -> None:
        """``recheck_seconds``: how often a wait reads its job again, where a signal
        of its end may be lost (:attr:`muxproxy.notify.Notifier.recheck_seconds`)."""
        self.settings = settings
        self.store = store
        self.storage = storage
        self.providers = providers
        self.signer = signer
        self.clock = clock
        self.metrics = metrics
        self.dispatcher = dispatcher
        self.events = events
        self.shutdown = shutdown
        self.recheck_seconds = recheck_seconds
        self._check_callback = check_callback
        self._check_reference = check_reference

    def model(self, model_id: str) -> ModelSettings:
        try:
            return self.settings.models[model_id]
        except KeyError:
            raise InvalidRequest(f"unknown model {model_id!r}", param="model") from None

    def model_or_default(self, model_id: str | None) -> ModelSettings:
        """The named model; with none named, ``surfaces.default_model`` or the first one."""
        if model_id is None:
            model_id = self.settings.surfaces.default_model or next(iter(self.settings.models),
                                                                    None)
            if model_id is None:
                raise InvalidRequest("'model' is required", param="model")
        return self.model(model_id)

    async def admit(self, key: ApiKey) -> None:
        """The key's rate of create (and webhook redeliver) requests, checked before
        any work (429 with Retry-After), in the store: one count for every process
        using it. Polls and downloads are not counted: they cost nothing upstream."""
        rpm = key.limits.rpm_limit
        if rpm is None:
            return
        wait = await self.store.take_request(key.id, rpm, now_ms(self.clock))
        if wait is not None:
            self._refuse("rate_limit")
            raise RateLimited(f"rate limit of {rpm} requests per minute exceeded",
                              retry_after=wait)

    def _refuse(self, reason: str) -> None:
        self.metrics.refused.labels(reason).inc()
        log.info("request refused", reason=reason)

    async def submit(self, key: ApiKey, surface: SurfaceName, submission: Submission, *,
                     before_start: Callable[[Job], None] | None = None,
                     idempotency: IdempotencyClaim | None = None) -> Job:
        """Store the job and start it (or queue it). ``before_start`` is called with
        the stored job before it can run: a caller that will :meth:`wait` for its end
        passes a :meth:`watch` there, and cannot miss it. ``idempotency`` is bound to
        the job as it is stored. Refusals are :class:`~muxproxy.errors.MuxError`
        (400 to 503), raised before anything is stored."""
        await self.admit(key)
        model = self.model(submission.model)
        if not key.may_use(model.id):
            self._refuse("model_access")
            raise Forbidden(f"this API key may not use model {model.id!r}", param="model")
        found = next_route(model, self.providers)
        if found is None:
            names = ", ".join(sorted({r.provider for r in model.routes}))
            raise InvalidRequest(f"model {model.id!r} is not available: its providers ({names}) "
                                 "have no API key configured", param="model")
        honouring = next_route(model, self.providers, request=submission.request)
        if honouring is None:
            option = self.providers[found[1].provider].unhonoured(submission.request)
            raise InvalidRequest(f"model {model.id!r} does not support {option!r}",
                                 param=option)
        route_index, route = honouring
        check_capabilities(model, submission.request)
        # Priced and sent upstream at one explicit quality (see pricing.billed).
        request = billed(model, submission.request)
        submission = evolve(submission, request=request)
        if submission.callback_url is not None and self._check_callback is not None:
            await self._check_callback(submission.callback_url,
                                       key.limits.webhook_allow_networks)
        await self._check_references(submission)
        credits = price(model, request)
        try:
            self.providers[route.provider].check(_with_uploads(submission), route.model,
                                                 route.params)
        except Unsupported as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        job_id = new_job_id()
        now = now_ms(self.clock)
        request = await self._store_inputs(job_id, now, submission)
        new = NewJob(
            id=job_id, key_id=key.id, surface=surface, model=model.id, request=request,
            client_params=submission.client_params, provider=route.provider,
            upstream_model=route.model, callback_url=submission.callback_url,
            created_at=now, deadline_at=now + int(self.settings.jobs.deadline_seconds * 1000),
            credits=credits, max_concurrent=key.limits.max_concurrent,
            route_index=route_index, idempotency=idempotency)
        # Created and dispatched as one: a request cancelled in between must not
        # leave a job claimed by this process that never starts.
        return await asyncio.shield(self._create_and_dispatch(new, before_start))

    async def _check_references(self, submission: Submission) -> None:
        """Refuse (400) now a reference URL whose host is known to be refused; the
        fetch before the upstream call checks again, on the address it dials."""
        if self._check_reference is None:
            return
        # Side by side: each may wait on DNS.
        checks = [self._check_reference(item.url, f"reference image {i + 1}", "images")
                  for i, item in enumerate(submission.ordered_images())
                  if isinstance(item, ImageRef) and item.url is not None]
        mask = submission.request.mask
        if mask is not None and mask.url is not None:
            checks.append(self._check_reference(mask.url, "the mask", "mask"))
        await asyncio.gather(*checks)

    async def _create_and_dispatch(self, new: NewJob,
                                   before_start: Callable[[Job], None] | None) -> Job:
        lease = self.dispatcher.reserve(new.provider)
        try:
            job = await self._create(evolve(new, lease=lease))
        except BaseException:
            if lease is not None:
                self.dispatcher.unreserve(new.provider)
            raise
        self.metrics.job_transitions.labels(job.model, job.provider, job.state).inc()
        log.info("job created", job_id=job.id, model=job.model, provider=job.provider,
                 surface=new.surface, credits=new.credits)
        try:
            if before_start is not None:
                before_start(job)
        finally:
            # Stored is promised: a failing hook must not leave it claimed but idle.
            if lease is not None:
                self.dispatcher.launch(job)
            else:
                self.dispatcher.wake()
        return job

    async def _create(self, new: NewJob) -> Job:
        """The store's insert. Whatever refused it (a mapped refusal, a fault, a bug),
        no job owns the request's uploads: they go."""
        try:
            return await self._insert(new)
        except BaseException:
            await self._discard_inputs(new.request)
            raise

    async def _insert(self, new: NewJob) -> Job:
        """The store's insert, its refusals mapped."""
        try:
            return await self.store.create_job(new)
        except InsufficientBalance as exc:
            self._refuse("credits")
            raise InsufficientCredits(f"insufficient credits: this request costs {exc.price}, "
                                      f"the balance is {exc.balance}") from None
        except IdempotencySuperseded:
            raise Conflict("a newer request with this Idempotency-Key took it over",
                           param="Idempotency-Key") from None
        except ConcurrencyLimitReached as exc:
            self._refuse("concurrency")
            raise RateLimited(f"{exc.limit} jobs already in flight for this key; wait for one "
                              "to finish", retry_after=1.0) from None

    async def _store_inputs(self, job_id: str, now: int,
                            submission: Submission) -> GenerationRequest:
        """The request with its uploads written to blob storage. A failed write is
        ours, not the client's: 503, and what was written already goes again."""
        written: list[ImageRef] = []

        async def store(name: str, upload: UploadedImage) -> ImageRef:
            key = blob_key("inputs", job_id, now, name, images.EXTENSIONS[upload.content_type])
            await self.storage.put(key, upload.data, upload.content_type)
            written.append(ImageRef(blob=key, content_type=upload.content_type))
            return written[-1]

        request = submission.request
        try:
            refs = [item if isinstance(item, ImageRef) else await store(f"image{i}", item)
                    for i, item in enumerate(submission.ordered_images())]
            mask = request.mask
            if submission.mask_upload is not None:
                mask = await store("mask", submission.mask_upload)
        except OSError:
            self.metrics.storage_errors.labels("write").inc()
            log.error("blob storage failed", operation="write", exc_info=True)
            await self._discard_inputs(evolve(request, images=tuple(written), mask=None))
            error = ServiceUnavailable("the gateway could not store the reference images; "
                                       "try again later", retry_after=STORAGE_RETRY_SECONDS)
            error.code = "storage_error"
            raise error from None
        except BaseException:
            # Cancelled (the client hung up) or failed otherwise: no job will own them.
            await self._discard_inputs(evolve(request, images=tuple(written), mask=None))
            raise
        return evolve(request, images=tuple(refs), mask=mask)

    async def _discard_inputs(self, request: GenerationRequest) -> None:
        """Remove the uploads of a request refused at the last step: no job owns them."""
        for key in request.input_keys():
            try:
                await self.storage.delete(key)
            except Exception:
                log.warning("could not remove a refused upload", key=key, exc_info=True)

    def watch(self, *, partials: bool = False) -> EndWatch:
        """A wait for the end of a job about to be submitted: pass it to
        :meth:`submit` as ``before_start``, then to :meth:`wait`; :meth:`EndWatch.close`
        it when done (a caller cancelled before the job was stored leaves nothing).
        ``partials``: also receive the previews the upstream streams (``.partials``)."""
        return EndWatch(self.events, partials=partials)

    async def wait(self, job: Job, timeout: float, *, watch: EndWatch | None = None) -> Job:
        """The job once it has ended (completed or failed), here or in another process
        on the same database.

        Raises :class:`~muxproxy.errors.StillRunning` (a 504) if ``timeout`` seconds
        pass first, or if the gateway stops first: at once when no step of the job
        runs here, else just before the grace period ends. The job goes on either way.
        To give up early (a client hung up), cancel the task awaiting this: nothing
        stays subscribed. ``watch`` is the one given to :meth:`submit`; without it
        the job is read again once subscribed, so an end in between is not missed.
        """
        ended = watch.ended if watch is not None else self.events.waiter(job.id)
        try:
            if watch is None:
                job = await self.store.get_job(job.id) or job
                if job.is_terminal:
                    return job
            return await self._until_end(job, ended, timeout)
        finally:
            self.events.discard(job.id, ended)

    async def _until_end(self, job: Job, ended: asyncio.Future[Job | None],
                         timeout: float) -> Job:
        """Wait on ``ended``; read the job when nudged (it ended in another process)
        and every ``recheck_seconds`` (in case that signal was lost)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        stopping = asyncio.ensure_future(self._stop_answer_due(job.id))
        try:
            while True:
                if not ended.done():
                    left = give_up - loop.time()
                    if left > 0 and not stopping.done():
                        watched: set[asyncio.Future[Any]] = {ended, stopping}
                        await asyncio.wait(watched, timeout=min(left, self.recheck_seconds or left),
                                           return_when=asyncio.FIRST_COMPLETED)
                    if not ended.done() and (stopping.done() or loop.time() >= give_up):
                        raise _still_running(job.id, timeout, stopping=stopping.done())
                if ended.done():
                    if (found := ended.result()) is not None:
                        return found
                    # Nudged: watched again before the read, so a later end is not missed.
                    self.events.discard(job.id, ended)
                    ended = self.events.waiter(job.id)
                current = await self._read_quietly(job.id)
                if current is not None and current.is_terminal:
                    return current
        finally:
            stopping.cancel()
            self.events.discard(job.id, ended)

    async def _read_quietly(self, job_id: str) -> Job | None:
        """The job as stored; None when the database cannot say now (the wait goes on)."""
        try:
            return await self.store.get_job(job_id)
        except ServiceUnavailable:
            return None

    async def _stop_answer_due(self, job_id: str) -> None:
        """Returns when a waiting caller must answer because the gateway stops: at
        once if no step of its job is running (no new one starts until the restart),
        else just before the grace period ends, in case the running step finishes it."""
        await self.shutdown.started.wait()
        if self.dispatcher.running(job_id):
            await self.shutdown.answer_due()

    async def job_for(self, key: ApiKey, job_id: str) -> Job:
        """The caller's own job; another key's job is indistinguishable from none."""
        job = await self.store.get_job(job_id, key_id=key.id) if job_id else None
        if job is None:
            raise NotFound("task not found")
        return job

    async def list_jobs(self, key: ApiKey, *, limit: int = 50,
                        before: int | None = None, before_id: str | None = None) -> list[Job]:
        """The caller's jobs, newest first; ``before`` (a ``created_at``, in ms) pages,
        and with ``before_id`` too, the page starts right after that job (see
        :mod:`muxproxy.history` for the cursor the surfaces hand out)."""
        return await self.store.list_jobs(key.id, limit=limit, before=before,
                                          before_id=before_id)

    async def cancel(self, key: ApiKey, job_id: str) -> Job:
        """End the caller's unfinished job as ``failed`` with ``fail_code`` ``cancelled``.

        Another key's job is :class:`~muxproxy.errors.NotFound`; a job that has ended
        already is a :class:`~muxproxy.errors.Conflict` (409). The move is the store's
        compare-and-swap on the state the job was read in, without a lease: it wins
        over a step running now, whose own write then finds the job ended and is
        dropped (the runner cancels an upstream job it started meanwhile). Billing
        rides the move as for any failure (a hold released, a charge refunded), and
        so does the callback delivery."""
        job = await self.job_for(key, job_id)
        # Each lost swap means the job moved along pending -> processing -> ended,
        # so this ends within three reads.
        while not job.is_terminal:
            now = now_ms(self.clock)
            try:
                cancelled = await self.store.transition(
                    job.id, job.state, JobState.FAILED, now=now, fail_code=CANCELLED,
                    fail_msg="cancelled by the client", completed_at=now)
            except StaleJob:
                job = await self.job_for(key, job_id)
                continue
            log.info("job cancelled", job_id=job.id, was=job.state.value)
            # Shielded: a client hanging up must not leave the upstream job running.
            await asyncio.shield(self.dispatcher.ended_elsewhere(cancelled))
            return cancelled
        error = Conflict(f"the job has ended already ({job.state.value}); only a pending or "
                         "processing job can be cancelled")
        error.code = "already_finished"
        raise error

    # -- for the console: a key sees its own jobs; the operator (key None) sees all --

    async def find_jobs(self, key: ApiKey | None, query: JobQuery) -> list[Job]:
        """Jobs matching ``query``, newest first: only ``key``'s own when given."""
        if key is not None:
            query = evolve(query, key_id=key.id)
        return await self.store.find_jobs(query)

    async def job_seen_by(self, key: ApiKey | None, job_id: str) -> Job:
        """:meth:`job_for`, or for the operator (``key`` None) any job."""
        if key is not None:
            return await self.job_for(key, job_id)
        job = await self.store.get_job(job_id) if job_id else None
        if job is None:
            raise NotFound("task not found")
        return job

    async def usage(self, key: ApiKey | None, since: int) -> list[UsageRow]:
        """Jobs and credits per model per UTC day since ``since``: ``key``'s, or with
        None every key's together."""
        return await self.store.usage(key.id if key is not None else None, since=since)

    async def result_links(self, job: Job) -> list[str]:
        """Signed links to the job's result images (none before it completes); each
        call signs afresh, valid ``storage.url_ttl_seconds``."""
        if job.result is None:
            return []
        return [await self.result_link(image) for image in job.result.images]

    async def result_link(self, image: StoredImage) -> str:
        """The link to a stored result image: with ``storage.redirect`` and a storage
        that presigns, the bucket's own URL (the bytes never pass through here);
        otherwise, or if presigning fails, the gateway's signed ``/files`` link."""
        storage = self.settings.storage
        if storage.redirect:
            try:
                url = await self.storage.url_for(image.key, storage.url_ttl_seconds)
            except OSError:
                self.metrics.storage_errors.labels("sign").inc()
                log.warning("could not presign a link; handing out the gateway's",
                            exc_info=True)
                url = None
            if url is not None:
                return url
        return self.signer.url(image.key)

    async def result_images(self, job: Job) -> list[bytes]:
        """The bytes of the job's result images, in order (none before it completes).
        Raises :class:`~muxproxy.errors.Expired` once ``storage.retention_days``
        deleted them, and an internal error if one is missing from storage."""
        if job.result is None or not job.result.images:
            return []
        if results_expired(job, self.settings.storage, now_ms(self.clock)):
            raise Expired()
        try:
            return [await self.storage.get(image.key) for image in job.result.images]
        except BlobNotFound:
            raise InternalError("a result image is missing from storage") from None
        except OSError:
            self.metrics.storage_errors.labels("read").inc()
            log.error("blob storage failed", operation="read", exc_info=True)
            raise StorageFailing() from None


def _still_running(job_id: str, timeout: float, *, stopping: bool) -> StillRunning:
    poll = f"poll GET /api/v1/images/generations?task_id={job_id}"
    if stopping:
        return StillRunning(f"the gateway is restarting before the image is ready; job "
                            f"{job_id} continues after the restart: {poll}",
                            job_id=job_id, stopping=True)
    return StillRunning(f"the image is not ready after {timeout:g} seconds; job {job_id} "
                        f"continues: {poll}", job_id=job_id, stopping=False)


def _with_uploads(submission: Submission) -> GenerationRequest:
    """The request as the provider will see it, uploads included (as placeholders:
    nothing is stored before the provider has accepted the request)."""
    request = submission.request
    images = tuple(item if isinstance(item, ImageRef) else ImageRef(content_type=item.content_type)
                   for item in submission.ordered_images())
    mask = request.mask
    if submission.mask_upload is not None:
        mask = ImageRef(content_type=submission.mask_upload.content_type)
    return evolve(request, images=images, mask=mask)
