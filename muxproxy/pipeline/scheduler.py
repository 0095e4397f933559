"""The in-process scheduler: claims due jobs within each provider's concurrency
limit and runs them.

The loop is the shared :class:`~muxproxy.pipeline.worker.WorkerLoop`: submits wake it at
once, here and (a signal of :mod:`muxproxy.notify`) in every other process on the
database with a free slot for the job; the timer is the earliest ``run_after`` in the
store (next poll, next retry) or the earliest lease to lapse, capped so deadlines
are swept every ``jobs.sweep_seconds``.

A step's lease covers the provider's timeout plus ``jobs.lease_margin_seconds``,
yet a step may make several calls (references, the upstream, the result's
download), each with that timeout. So the sweep renews the lease of every step
still running here once half of it is gone: a live step's lease never lapses,
while a job whose lease could not be handed back (the release failed), or whose
process died, falls due again when it lapses, and the next claim (of any replica)
takes it up. A job whose submit a dead process cut off is the sweep's
``Store.recover`` instead, which counts the interruption (retried once, then failed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog

from muxproxy.clock import Clock, now_ms
from muxproxy.logs import get_logger
from muxproxy.metrics import Metrics
from muxproxy.notify import EVERY
from muxproxy.pipeline.jobs import Job, Lease
from muxproxy.pipeline.runner import JobRunner
from muxproxy.pipeline.worker import WorkerLoop
from muxproxy.providers.base import Provider
from muxproxy.settings import JobSettings
from muxproxy.store import Store

log = get_logger("muxproxy.pipeline.scheduler")


class Scheduler(WorkerLoop[Job, bool]):
    def __init__(self, store: Store, providers: Mapping[str, Provider], runner: JobRunner,
                 clock: Clock, settings: JobSettings, metrics: Metrics) -> None:
        super().__init__(clock, log, name="scheduler", label="scheduler",
                         sweep_seconds=settings.sweep_seconds)
        self.store = store
        self.providers = providers
        self.runner = runner
        self.settings = settings
        self.metrics = metrics
        self._draining = False
        self._leases: dict[str, int] = {}  # job id -> lease_until, for steps running here
        # Jobs whose end was signalled while a step of theirs ran here (heard_end).
        self._ends_heard: set[str] = set()
        self._in_flight = dict.fromkeys(providers, 0)
        # Whether due jobs of a provider may be waiting for a slot (then a new job
        # queues behind them rather than take a slot that frees up).
        self._queued = dict.fromkeys(providers, False)
        self._next_sweep = 0

    async def start(self) -> None:
        await self._recover(now_ms(self.clock))
        self._start_loop()

    async def _recover(self, now: int) -> None:
        """Take over the jobs whose lease lapsed in another process (it died, or
        stopped renewing): at start, and on every sweep, so any replica takes over
        a dead one's jobs within a sweep of their lease lapsing."""
        recovery = await self.store.recover(self.owner, now)
        if recovery.resumed or recovery.retried or recovery.failed:
            log.info("took over jobs whose lease lapsed", resumed=recovery.resumed,
                     retried=recovery.retried, failed=len(recovery.failed))
        for job in recovery.failed:
            await self.runner.ended(job)

    def reserve(self, provider: str) -> Lease | None:
        """A slot for a job about to be created, when ``provider`` has one free and
        no job of it waits in the queue: the job is then created already claimed and
        started at once (:meth:`launch`), with no pass of the loop below in between."""
        if self._draining or self._stopping or self._queued[provider] or self._full(provider):
            self._queued[provider] = True  # its job waits: later ones queue behind it
            return None
        self._in_flight[provider] += 1
        return Lease(self.owner, now_ms(self.clock) + self._lease_ms(self.providers[provider]))

    def unreserve(self, provider: str) -> None:
        """Give back a slot from :meth:`reserve` whose job was not created."""
        was_full = self._full(provider)
        self._in_flight[provider] -= 1
        if was_full or self._queued[provider]:
            self._wake.set()  # a pass meanwhile saw no free slot for due jobs

    def launch(self, job: Job) -> None:
        """Run a job created with a lease from :meth:`reserve`."""
        self._in_flight[job.provider] -= 1  # _run_step counts it again
        self._run_step(job)

    def drain(self) -> None:
        """Stop claiming jobs now (a shutdown began); steps already running go on
        until :meth:`stop`, and every job left waits for the next start."""
        self._draining = True
        self._wake.set()

    def queued_elsewhere(self, provider: str) -> None:
        """Another process queued a job of ``provider`` (:data:`~muxproxy.notify.EVERY`:
        jobs may have been queued unheard): a pass claims it now if there is a free
        slot for it here, rather than at the next sweep. A
        :class:`~muxproxy.notify.Notifier` handler."""
        if provider == EVERY or (provider in self.providers and not self._full(provider)):
            self._wake.set()

    def heard_end(self, job_id: str) -> None:
        """A job ended in some process (:data:`~muxproxy.notify.EVERY`: any may have),
        so its waiters here read it (:meth:`JobEvents.nudge`). When a step of the job
        runs here, the signal is most likely that step's own end, which reaches the
        waiters with the job itself: they are nudged only once the step is over, and
        then find nothing to read unless the job ended elsewhere after all. A
        :class:`~muxproxy.notify.Notifier` handler."""
        if job_id in self._leases:
            self._ends_heard.add(job_id)
        else:
            self.runner.events.nudge(job_id)

    def running(self, job_id: str) -> bool:
        """Is a step of this job running in this process now?"""
        return job_id in self._leases

    async def ended_elsewhere(self, job: Job) -> None:
        """A job the gateway ended (a cancel): what the runner does for a job that
        ends. A step of it running now finds it ended and writes nothing."""
        await self.runner.ended(job)
        if job.upstream_id is not None:
            await self.runner.cancel_upstream(job)

    async def _pass(self) -> None:
        now = now_ms(self.clock)
        # Deadlines are swept once per jobs.sweep_seconds, not on every wake-up: a busy
        # gateway wakes per submit and per finished step, and a running step already
        # enforces its own deadline. Likewise only configured providers get new jobs,
        # so the others are looked at on sweeps only (for jobs an earlier config left).
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + int(self.settings.sweep_seconds * 1000)
            await self._renew_leases(now)
            if not (self._draining or self._stopping):
                await self._recover(now)
            for job in await self.store.expire_overdue(now):
                log.info("job deadline exceeded", job_id=job.id)
                await self.runner.ended(job)
                if job.upstream_id is not None:
                    await self.runner.cancel_upstream(job)
        if self._stopping:
            return
        wanted = {}
        for name, provider in self.providers.items():
            if self._draining or not (sweep or provider.configured):
                continue
            free = provider.settings.max_concurrency - self._in_flight[name]
            if free <= 0:
                continue
            wanted[name] = (free, now + self._lease_ms(provider))
        claimed = await self.store.claim_due_many(wanted, now, self.owner)
        for name, (free, _) in wanted.items():
            jobs = claimed.get(name, [])
            # Fewer due jobs than free slots: none is left waiting for one.
            self._queued[name] = len(jobs) >= free
            for job in jobs:
                # A step still running here whose lease lapsed anyway (the loop was
                # held up past it): the claim has renewed it; never run it twice.
                if job.id not in self._leases:
                    self._run_step(job)

    def _full(self, provider: str) -> bool:
        """Are all of the provider's slots taken?"""
        return self._in_flight[provider] >= self.providers[provider].settings.max_concurrency

    def _lease_ms(self, provider: Provider) -> int:
        return int((provider.settings.timeout_seconds
                    + self.settings.lease_margin_seconds) * 1000)

    async def _renew_leases(self, now: int) -> None:
        """Extend the leases of steps running here once half of a lease is gone."""
        renew: dict[str, list[str]] = {}
        for job in self._running.values():
            lease_ms = self._lease_ms(self.providers[job.provider])
            if self._leases.get(job.id, 0) - now < lease_ms // 2:
                renew.setdefault(job.provider, []).append(job.id)
        for provider, ids in renew.items():
            until = now + self._lease_ms(self.providers[provider])
            await self.store.renew_leases(ids, self.owner, until)
            self._leases.update(dict.fromkeys(ids, until))

    async def _next_wake(self) -> int:
        """When the next job falls due (ms), but no later than the next sweep.

        The sweep time is the one the last pass set, not "now + interval": a clock
        that jumped during the pass (a test's ManualClock) must make the sweep due,
        not push it back."""
        sweep = self._next_sweep
        if self._draining:
            return sweep  # due jobs wait for the next start: no hurry
        # Providers that cannot serve are looked at on sweeps only (see _pass): a job
        # of theirs that is due must not make every pass until then come at once.
        free = [n for n, p in self.providers.items() if p.configured and not self._full(n)]
        due = await self.store.next_due(free)
        return sweep if due is None else min(sweep, due)

    def _run_step(self, job: Job) -> None:
        self._leases[job.id] = job.lease_until or 0
        self._in_flight[job.provider] += 1
        self.metrics.jobs_in_flight.labels(job.provider).inc()
        self._spawn(job, f"job-{job.id}")

    async def _execute(self, job: Job) -> bool:
        """One step of ``job``; True when it left the job terminal."""
        structlog.contextvars.bind_contextvars(job_id=job.id)
        try:
            return await self.runner.run(job, self.owner)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job step failed")
            await self._release(job)
            return False

    async def _release(self, job: Job) -> None:
        """Hand a lease back; when the database refuses, the lease lapses instead and
        the job is claimed again then (see claim_due), so nothing more is needed."""
        try:
            await self.store.release(job.id, self.owner, now=now_ms(self.clock))
        except Exception as exc:
            log.warning("could not hand a job's lease back; it is taken up again when "
                        "the lease lapses", job_id=job.id, error=type(exc).__name__)

    def _finished(self, task: asyncio.Task[bool], job: Job) -> None:
        self._leases.pop(job.id, None)
        if job.id in self._ends_heard:
            self._ends_heard.discard(job.id)
            self.runner.events.nudge(job.id)
        provider = job.provider
        was_full = self._full(provider)
        self._in_flight[provider] -= 1
        self.metrics.jobs_in_flight.labels(provider).dec()
        # A pass is needed when the step set the job's next run (its time may come
        # before the timer's), or when due jobs may wait for the slot it frees: the
        # last pass left them out while the provider was full. A job that finished
        # on a provider with room to spare changes neither.
        finished = not task.cancelled() and task.exception() is None and task.result()
        if not finished or was_full or self._queued[provider]:
            self._wake.set()
