"""How long a job's images are kept, and the background sweep that deletes them.

A job's results are kept ``storage.retention_days`` after it ended (0: forever).
Past that, its links and downloads answer 404 whether or not the sweep has run
yet (the surfaces ask :func:`results_expired`), and the sweep deletes the blobs.
The same sweep deletes the uploaded inputs of every ended job, as a backstop for
their deletion when the job ends (a crash or a storage fault in between).

The loop is "sweep, then wait ``sweep_interval_seconds``" on the app's clock, so
tests drive it with a manual clock. A failing pass is logged and the loop
carries on; a job whose blobs could not all be deleted is left unmarked, passed
over for the rest of the pass, and tried again on the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from muxproxy.clock import Clock, now_ms
from muxproxy.logs import get_logger
from muxproxy.pipeline.jobs import Job
from muxproxy.settings import StorageSettings
from muxproxy.storage import BlobStorage
from muxproxy.store import Store

log = get_logger("muxproxy.pipeline.retention")

DAY_MS = 86_400_000
BATCH = 200
INPUTS, RESULTS = 1, 2  # the store's ``swept`` levels

_Batch = Callable[[tuple[int, str] | None], Awaitable[list[Job]]]  # the jobs after a cursor
_Keys = Callable[[Job], list[str]]  # which of a job's blobs go


def retention_ms(settings: StorageSettings) -> int | None:
    """How long results are kept after their job ended; None: forever."""
    return int(settings.retention_days * DAY_MS) if settings.retention_days > 0 else None


def results_expired(job: Job, settings: StorageSettings, now: int) -> bool:
    keep = retention_ms(settings)
    return (keep is not None and job.is_terminal and job.completed_at is not None
            and job.completed_at + keep <= now)


def input_keys(job: Job) -> list[str]:
    return job.request.input_keys()


def result_keys(job: Job) -> list[str]:
    return [image.key for image in job.result.images] if job.result is not None else []


class RetentionSweep:
    def __init__(self, settings: StorageSettings, store: Store, storage: BlobStorage,
                 clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.clock = clock
        self.passes = 0  # completed passes, for tests and logs
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="muxproxy-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                deleted = await self.sweep()
                if deleted:
                    log.info("retention sweep deleted blobs", blobs=deleted)
            except Exception:
                log.exception("retention sweep failed")
            self.passes += 1
            await self.clock.sleep(self.settings.sweep_interval_seconds)

    async def sweep(self) -> int:
        """One pass; returns how many blobs it deleted."""
        deleted = 0
        keep = retention_ms(self.settings)
        if keep is not None:
            cutoff = now_ms(self.clock) - keep
            deleted += await self._drain(
                lambda after: self.store.expired_unswept(cutoff, BATCH, after), RESULTS,
                lambda job: [*input_keys(job), *result_keys(job)])
        deleted += await self._drain(lambda after: self.store.ended_unswept(BATCH, after),
                                     INPUTS, input_keys)
        return deleted

    async def _drain(self, batch: _Batch, level: int, keys: _Keys) -> int:
        deleted = 0
        after: tuple[int, str] | None = None
        while True:
            jobs = await batch(after)
            done, count = await self._delete(jobs, keys)
            deleted += count
            await self.store.mark_swept(done, level)
            if len(jobs) < BATCH:
                return deleted
            # Page on past the jobs that failed (they are tried again next pass):
            # read from the top, a full batch of them would hide every job behind it.
            last = jobs[-1]
            after = (last.completed_at or 0, last.id)

    async def _delete(self, jobs: Iterable[Job], keys: _Keys) -> tuple[list[str], int]:
        done, deleted = [], 0
        for job in jobs:
            try:
                for key in keys(job):
                    await self.storage.delete(key)
                    deleted += 1
            except Exception as exc:
                log.warning("could not delete a job's blobs", job_id=job.id,
                            error=type(exc).__name__)
                continue
            done.append(job.id)
        return done, deleted
