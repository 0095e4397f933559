"""A shutdown in progress, known from the moment the stop signal arrives.

uvicorn tells the app it is stopping (the lifespan's shutdown) only after the
requests in flight have ended or the grace period ran out. What must react sooner
learns it here: the scheduler stops claiming jobs at once, and requests waiting
for a job answer before the grace period ends instead of being cut off.
"""

from __future__ import annotations

import asyncio
import time


class Shutdown:
    def __init__(self, grace_seconds: float) -> None:
        self.grace = grace_seconds
        self.started = asyncio.Event()
        self._deadline: float | None = None

    def begin(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.grace
            self.started.set()

    def remaining(self) -> float:
        """Seconds left of the grace period (all of it before :meth:`begin`)."""
        if self._deadline is None:
            return self.grace
        return max(0.0, self._deadline - time.monotonic())

    async def answer_due(self) -> None:
        """Return once a request waiting through a shutdown should answer: shortly
        before the grace period ends, leaving time to send the response."""
        await self.started.wait()
        await asyncio.sleep(max(0.0, self.remaining() - min(1.0, self.grace * 0.2)))
