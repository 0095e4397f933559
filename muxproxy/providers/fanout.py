"""Running one upstream call per requested image, for upstreams that make one
image per request (Gemini, BFL): all succeed, or the job fails as a whole."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from muxproxy.providers.base import UpstreamError

T = TypeVar("T")


async def all_or_nothing(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run the calls concurrently and return their results in order.

    On the first failure the other calls are cancelled and one failure is raised:
    a permanent :class:`UpstreamError` wins over a transient one (retrying a job
    with a moderated image in it would only fail again).
    """
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as failed:
        raise _most_telling(failed) from None
    return [task.result() for task in tasks]


def _most_telling(group: BaseExceptionGroup[BaseException]) -> BaseException:
    errors = _flatten(group)
    upstream = [e for e in errors if isinstance(e, UpstreamError)]
    for error in upstream:
        if not error.transient:
            return error
    if len(upstream) == len(errors):
        return upstream[0]
    # Anything else is a bug in an adapter: let it surface as itself.
    return next(e for e in errors if not isinstance(e, UpstreamError))


def _flatten(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            out.extend(_flatten(error))
        else:
            out.append(error)
    return out
