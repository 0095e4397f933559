"""The notice that a job reached a terminal state, for callers that wait (the OpenAI
surface answers only when the image exists) and for subscribers (the webhook relay).

A job that ends in this process is published here with the job itself. One that
ends in another process on the same database arrives as a signal with its id only
(:mod:`muxproxy.notify`): :meth:`JobEvents.nudge` then tells its waiters to read it
(:meth:`~muxproxy.gateway.Gateway.wait` does), and subscribers hear nothing (the
process that ended it told its own).

Also the partial images an upstream streams while a job runs, for a client
streaming it: in this process only (a job another process runs streams none)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from muxproxy.generation import PartialImage
from muxproxy.logs import get_logger
from muxproxy.notify import EVERY
from muxproxy.pipeline.jobs import Job

log = get_logger("muxproxy.pipeline.events")


class JobEvents:
    def __init__(self) -> None:
        # A waiter gets the job once it ended here, or None: read it (see nudge).
        self._waiters: defaultdict[str, set[asyncio.Future[Job | None]]] = defaultdict(set)
        self._subscribers: list[Callable[[Job], None]] = []
        self._partials: defaultdict[str, set[asyncio.Queue[PartialImage]]] = defaultdict(set)

    def subscribe(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback`` with every terminal job. It must be quick and not block:
        it runs inside the worker that finished the job."""
        self._subscribers.append(callback)

    def publish(self, job: Job) -> None:
        # A listener that never got to unlisten (a stream that never started) goes
        # with its job's end: a partial after the end means nothing.
        self._partials.pop(job.id, None)
        for future in self._waiters.pop(job.id, ()):
            if not future.done():
                future.set_result(job)
        for callback in self._subscribers:
            try:
                callback(job)
            except Exception:
                log.exception("job event subscriber failed")

    def partial(self, job_id: str, image: PartialImage) -> None:
        """Hand a streamed preview to whoever listens to the job; dropped if none."""
        for queue in self._partials.get(job_id, ()):
            queue.put_nowait(image)

    def listen(self, job_id: str) -> asyncio.Queue[PartialImage]:
        """A queue that receives the job's partial images from now on."""
        queue: asyncio.Queue[PartialImage] = asyncio.Queue()
        self._partials[job_id].add(queue)
        return queue

    def unlisten(self, job_id: str, queue: asyncio.Queue[PartialImage]) -> None:
        queues = self._partials.get(job_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._partials[job_id]

    def nudge(self, job_id: str) -> None:
        """The job ended elsewhere (or, given :data:`~muxproxy.notify.EVERY`, any job
        may have): its waiters get None, read the job, and wait again if it has not
        ended after all. A signal handler of :class:`~muxproxy.notify.Notifier`."""
        ids = list(self._waiters) if job_id == EVERY else [job_id]
        for waited in ids:
            for future in self._waiters.pop(waited, ()):
                if not future.done():
                    future.set_result(None)

    async def wait(self, job_id: str, timeout: float) -> Job | None:
        """The job once terminal here, or None after ``timeout`` seconds or when
        nudged.

        Subscribe before checking the store, so a job finishing in between is not
        missed: callers do ``waiter = events.waiter(id)``, read, then await it.
        """
        future = self.waiter(job_id)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            self.discard(job_id, future)

    def waiter(self, job_id: str) -> asyncio.Future[Job | None]:
        future: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        self._waiters[job_id].add(future)
        return future

    def waiting(self, job_id: str) -> int:
        """How many callers wait for the job's end."""
        return len(self._waiters.get(job_id, ()))

    def discard(self, job_id: str, future: asyncio.Future[Job | None]) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[job_id]


class EndWatch:
    """A wait for the end of a job not created yet. Passed as the gateway's
    ``before_start``, it subscribes once the job is stored, before it can start, so
    no read of the job is needed to know it has not already ended. A caller that
    gives up before then calls :meth:`close` and leaves nothing subscribed, even if
    the job is created afterwards (its creation is shielded from the caller)."""

    def __init__(self, events: JobEvents, *, partials: bool = False) -> None:
        self._events = events
        self._closed = False
        self._job_id = ""
        self._future: asyncio.Future[Job | None] | None = None
        self._partials = partials
        #: With ``partials``: the job's streamed previews, once the job exists.
        self.partials: asyncio.Queue[PartialImage] | None = None

    def __call__(self, job: Job) -> None:
        if not self._closed:
            self._job_id, self._future = job.id, self._events.waiter(job.id)
            if self._partials:
                self.partials = self._events.listen(job.id)

    @property
    def ended(self) -> asyncio.Future[Job | None]:
        """Resolves with the job once terminal (None: read it, see :meth:`JobEvents.nudge`);
        there once the job was created."""
        if self._future is None:
            raise RuntimeError("the job was not created")
        return self._future

    def close(self) -> None:
        self._closed = True
        if self._future is not None:
            self._events.discard(self._job_id, self._future)
        if self.partials is not None:
            self._events.unlisten(self._job_id, self.partials)
