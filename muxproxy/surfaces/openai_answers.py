"""How the OpenAI surface answers with a job: OpenAI's images JSON, or with
``stream: true`` server-sent events in OpenAI's shapes (PROVIDERS.md "OpenAI image
streaming"): ``image_generation.partial_image`` / ``image_edit.partial_image``
events as the upstream streams previews, one ``*.completed`` event per image, and
an ``error`` event (the SDKs raise on it) when the job fails or the wait runs out.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from muxproxy import images, sse
from muxproxy.app_state import AppState
from muxproxy.clock import now_ms
from muxproxy.errors import InternalError, InvalidRequest, MuxError, UpstreamFailed
from muxproxy.generation import PartialImage
from muxproxy.logs import get_logger
from muxproxy.pipeline.jobs import Job, JobState

log = get_logger("muxproxy.openai")

# Failure codes that mean the request itself was refused (400); any other failed
# job is an upstream error (502). Adapters use ``moderation_blocked`` for safety blocks.
REFUSAL_CODES = frozenset({
    "unsupported", "invalid_request", "moderation_blocked", "content_policy_violation",
    "bad_image_url", "invalid_reference",
})
# The values OpenAI's response and event types allow (events: also auto).
QUALITIES = ("low", "medium", "high", "xhigh", "max")
BACKGROUNDS = ("transparent", "opaque", "auto")


@dataclass(frozen=True)
class Reply:
    """How the client wants its answer."""

    response_format: str
    #: The partial images asked for when streaming (0-3); None: one JSON answer.
    stream: int | None = None
    edit: bool = False


def failure(job: Job) -> MuxError:
    code = job.fail_code or "upstream_error"
    message = job.fail_msg or "image generation failed"
    error: MuxError = InvalidRequest(message) if code in REFUSAL_CODES \
        else UpstreamFailed(message)
    error.code = code
    return error


def usage(job: Job) -> dict[str, Any]:
    """Token counts in OpenAI's names (the gateway does not meter
    tokens: zeros), and the job's price in credits."""
    return {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
            "output_tokens": 0, "total_tokens": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "credits": job.credits}


def honoured(job: Job) -> dict[str, Any]:
    """The optional values the job was made with, echoed only when honoured (a
    provider that cannot honour one refuses the request before the job exists)."""
    echoed: dict[str, Any] = {}
    if job.request.quality in QUALITIES:
        echoed["quality"] = job.request.quality
    if job.request.extra.get("background") in BACKGROUNDS[:2]:
        echoed["background"] = job.request.extra["background"]
    return echoed


async def images_response(state: AppState, job: Job, response_format: str) -> dict[str, Any]:
    assert job.result is not None
    result = job.result
    if response_format == "b64_json":
        items = [{"b64_json": base64.b64encode(blob).decode("ascii")}
                 for blob in await state.gateway.result_images(job)]
    else:
        items = [{"url": url} for url in await state.gateway.result_links(job)]
    data: list[dict[str, Any]] = []
    for item in items:
        if result.revised_prompt is not None:
            item["revised_prompt"] = result.revised_prompt
        data.append(item)
    body: dict[str, Any] = {"created": (job.completed_at or job.created_at) // 1000,
                            "data": data, "usage": usage(job)}
    first = result.images[0]
    body["output_format"] = images.EXTENSIONS.get(first.content_type, "png")
    if first.width and first.height:
        body["size"] = f"{first.width}x{first.height}"
    body.update(honoured(job))
    return body


def error_body(exc: MuxError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param,
                      "code": exc.code}}


class EventStream(Response):
    """A ``text/event-stream`` answer. Unlike Starlette's streaming response it
    always watches for the client hanging up while no event is due (a job may run
    for minutes): the events stop; the job does not."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        # Not Response.__init__: an empty body would be declared as Content-Length 0.
        self.status_code = 200
        self.background = None
        self.events = events
        self.init_headers({"cache-control": "no-cache", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})

        async def pump() -> None:
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        async def hang_up() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pumping, gone = asyncio.ensure_future(pump()), asyncio.ensure_future(hang_up())
        try:
            await asyncio.wait({pumping, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, gone):
                task.cancel()
            await asyncio.wait({pumping, gone})
        if pumping.cancelled():
            log.info("client disconnected while streaming; the job continues")
        elif (error := pumping.exception()) is not None:
            log.warning("streaming stopped; the job continues", error=type(error).__name__)


async def job_events(state: AppState, job: Job, reply: Reply,
                     ended: Callable[[], Awaitable[Job]],
                     partials: asyncio.Queue[PartialImage] | None,
                     release: Callable[[], None]) -> AsyncIterator[bytes]:
    """The events of one job: partials as they come, then its end. ``ended``
    starts the wait for the end; ``release`` unsubscribes whatever was subscribed."""
    prefix = "image_edit" if reply.edit else "image_generation"
    waiting = asyncio.ensure_future(ended())
    try:
        while partials is not None:
            getting = asyncio.ensure_future(partials.get())
            done, _ = await asyncio.wait({waiting, getting},
                                         return_when=asyncio.FIRST_COMPLETED)
            if getting in done:
                yield sse.encode(f"{prefix}.partial_image", partial_event(
                    prefix, getting.result(), job, state))
                continue
            getting.cancel()
            # The end is known; previews published before it are still queued.
            while not partials.empty():
                yield sse.encode(f"{prefix}.partial_image", partial_event(
                    prefix, partials.get_nowait(), job, state))
            break
        try:
            final = await waiting
            if final.state is JobState.FAILED:
                raise failure(final)
            for event in await completed_events(prefix, state, final):
                yield sse.encode(event["type"], event)
        except MuxError as exc:
            yield sse.encode("error", error_body(exc))
        except Exception:
            log.exception("streaming a job's answer failed", job_id=job.id)
            yield sse.encode("error", error_body(InternalError("internal server error")))
    finally:
        waiting.cancel()
        release()


def partial_event(prefix: str, image: PartialImage, job: Job, state: AppState
                  ) -> dict[str, Any]:
    fields = _event_fields(job, None)
    fields.update({k: v for k, v in image.fields.items() if k in fields})
    return {"type": f"{prefix}.partial_image", "b64_json": image.b64_json,
            "created_at": now_ms(state.clock) // 1000,
            "partial_image_index": image.index, **fields}


async def completed_events(prefix: str, state: AppState, job: Job) -> list[dict[str, Any]]:
    assert job.result is not None
    blobs = await state.gateway.result_images(job)
    events = []
    for stored, blob in zip(job.result.images, blobs, strict=True):
        events.append({"type": f"{prefix}.completed",
                       "b64_json": base64.b64encode(blob).decode("ascii"),
                       "created_at": (job.completed_at or job.created_at) // 1000,
                       **_event_fields(job, stored.content_type, stored.width, stored.height),
                       "usage": usage(job)})
    return events


def _event_fields(job: Job, content_type: str | None, width: int | None = None,
                  height: int | None = None) -> dict[str, Any]:
    """The event fields the SDK types require, from what the job was made with
    (``auto`` where the provider chose)."""
    request = job.request
    size = f"{width}x{height}" if width and height else \
        f"{request.size[0]}x{request.size[1]}" if request.size else "auto"
    fmt = images.EXTENSIONS.get(content_type or "", request.output_format or "png")
    return {"size": size, "quality": "auto", "background": "auto", "output_format": fmt,
            **honoured(job)}
