"""A provider that answers from a function, as httpx's ``MockTransport`` does: the
pipeline, a surface or the gateway can be tested without any upstream.

The handler receives the :class:`Call` of a submit or the :class:`Handle` of a
poll and returns what a real adapter would (``Finished``, ``Submitted``,
``Running``), or raises :class:`UpstreamError` (or :class:`Unsupported`) as one
would::

    def handler(step: Call | Handle) -> SubmitOutcome | PollOutcome:
        if isinstance(step, Call):
            return Submitted(upstream_id="up-1")
        return Finished(images=(ImageData(png_bytes),))

    provider = ScriptedProvider(handler)

It may be a coroutine function too. Every step it saw is kept in ``steps`` and
every cancelled handle in ``canceled``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from muxproxy.clock import Clock, SystemClock
from muxproxy.generation import GenerationRequest
from muxproxy.providers.base import (
    Call,
    Handle,
    PollOutcome,
    Provider,
    Running,
    SubmitOutcome,
    Submitted,
    UpstreamError,
)
from muxproxy.settings import ProviderSettings

Outcome = SubmitOutcome | PollOutcome
Handler = Callable[[Call | Handle], Outcome | Awaitable[Outcome]]
Checker = Callable[[GenerationRequest, str, Mapping[str, Any]], None]


class ScriptedProvider(Provider):
    kind: ClassVar[str] = "scripted"
    is_async = True
    needs_key = False

    def __init__(self, handler: Handler, *, name: str = "scripted",
                 settings: ProviderSettings | None = None, clock: Clock | None = None,
                 check: Checker | None = None) -> None:
        # Nothing here goes on the wire, so there is no HTTP session to hold.
        self.settings = settings or ProviderSettings(name=name, kind=self.kind)
        self.name = self.settings.name
        self.clock = clock or SystemClock()
        self.base_url = ""
        self.handler = handler
        self._check = check
        self.steps: list[Call | Handle] = []
        self.canceled: list[Handle] = []

    def check(self, request: GenerationRequest, upstream_model: str,
              params: Mapping[str, Any]) -> None:
        if self._check is not None:
            self._check(request, upstream_model, params)

    async def submit(self, call: Call) -> SubmitOutcome:
        outcome = await self._answer(call)
        if isinstance(outcome, Running):
            raise self._out_of_turn("a submit", outcome)
        return outcome

    async def poll(self, handle: Handle) -> PollOutcome:
        outcome = await self._answer(handle)
        if isinstance(outcome, Submitted):
            raise self._out_of_turn("a poll", outcome)
        return outcome

    async def cancel(self, handle: Handle) -> None:
        self.canceled.append(handle)

    def _out_of_turn(self, step: str, outcome: Outcome) -> UpstreamError:
        return UpstreamError(f"{self.name}: the handler answered {step} with "
                             f"{type(outcome).__name__}", transient=False, code="adapter_error")

    async def _answer(self, step: Call | Handle) -> Outcome:
        self.steps.append(step)
        answer = self.handler(step)
        if inspect.isawaitable(answer):
            return await answer
        return answer
