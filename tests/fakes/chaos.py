"""A chaos upstream: an OpenAI-compatible images API (sync, under ``/v1``) and a
fal.ai queue (async, under ``/queue``) on one loopback server, shaped like the real
ones (PROVIDERS.md), that answers calls with faults at random.

The fault for a call is drawn from a generator seeded with the run's seed, the
job's tag (``#tag`` in the prompt), the endpoint and how many times that job has
called it, so a run is reproducible whatever order concurrent calls arrive in.
Faults: 500, 502 (an HTML page), 429 with Retry-After, a hang past the client's
timeout, a connection closed mid-body, invalid JSON, a 200 missing its key field,
an image URL that 404s, and 200 MB bodies (as the answer or as the image), which
are streamed from one small buffer, never held.

With ``rate = 0`` it is a well-behaved fake; the gates (``hold_sync``,
``accepting``, ``answering_polls``, ``hold_async``) stop work at chosen points
for crash tests.
Handlers are cancelled when the client hangs up, like a real server's work for a
request that was never read: a submit cut off before it was accepted creates
nothing.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image

CHAOS_KEY = "chaos-upstream-secret-key-0001"
HUGE_BYTES = 200 * 1024 * 1024
_CHUNK = 1024 * 1024
_TAG = re.compile(r"#([A-Za-z0-9_-]+)")


class Fault(StrEnum):
    OK = "ok"
    HTTP_500 = "500"
    HTTP_502 = "502"
    RATE_LIMITED = "429"
    HANG = "hang"
    CUT = "cut"
    BAD_JSON = "bad_json"
    MISSING_FIELD = "missing_field"
    DEAD_IMAGE = "dead_image"
    HUGE_BODY = "huge_body"
    HUGE_IMAGE = "huge_image"


# Which faults each endpoint can show (an image URL only exists in a result).
_COMMON = (Fault.HTTP_500, Fault.HTTP_502, Fault.RATE_LIMITED, Fault.HANG, Fault.CUT,
           Fault.BAD_JSON, Fault.MISSING_FIELD, Fault.HUGE_BODY)
_RESULTS = (*_COMMON, Fault.DEAD_IMAGE, Fault.HUGE_IMAGE)
ENDPOINT_FAULTS: Mapping[str, tuple[Fault, ...]] = {
    "sync": _RESULTS, "submit": _COMMON, "status": _COMMON, "result": _RESULTS,
}
DEFAULT_WEIGHTS: Mapping[Fault, float] = {
    Fault.HTTP_500: 3, Fault.HTTP_502: 2, Fault.RATE_LIMITED: 2, Fault.HANG: 0.5,
    Fault.CUT: 2, Fault.BAD_JSON: 2, Fault.MISSING_FIELD: 1, Fault.DEAD_IMAGE: 1,
    Fault.HUGE_BODY: 0.15, Fault.HUGE_IMAGE: 0.15,
}


def png(color: tuple[int, int, int] = (30, 120, 200), size: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


@dataclass
class QueuedRequest:
    id: str
    tag: str
    root: str
    polls: int = 0


@dataclass
class ChaosUpstream:
    seed: int = 0
    #: The share of calls answered with a fault.
    rate: float = 0.0
    weights: Mapping[Fault, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    key: str = CHAOS_KEY
    #: A hang lasts this long at most (the client gives up well before).
    hang_seconds: float = 30.0
    #: Status polls before a queued request completes.
    polls_to_complete: int = 2
    #: Sync calls for these upstream models wait until :meth:`release_sync`.
    hold_sync: set[str] = field(default_factory=set)
    #: While True, queued requests stay IN_PROGRESS.
    hold_async: bool = False

    url: str = ""
    #: Calls by endpoint, faults included.
    calls: Counter[str] = field(default_factory=Counter)
    #: Queued requests accepted per job tag: the exactly-once count.
    accepted: Counter[str] = field(default_factory=Counter)
    #: Sync calls that got past the hold gate, per job tag.
    sync_started: Counter[str] = field(default_factory=Counter)
    #: Every (endpoint, fault) served, per job tag.
    history: defaultdict[str, list[tuple[str, Fault]]] = field(
        default_factory=lambda: defaultdict(list))
    #: Calls waiting at a gate now: sync calls, submits, status polls.
    waiting: int = 0
    submits_waiting: int = 0
    polls_waiting: int = 0

    def __post_init__(self) -> None:
        self.image = png()
        self._zeros = bytes(_CHUNK)
        self._queued: dict[str, QueuedRequest] = {}
        self._per_call: Counter[tuple[str, str]] = Counter()
        self._sync_open = asyncio.Event()
        self._closing = asyncio.Event()
        #: Cleared to make submits wait before they are accepted, and status polls
        #: before they are answered.
        self.accepting = asyncio.Event()
        self.accepting.set()
        self.answering_polls = asyncio.Event()
        self.answering_polls.set()
        self._runner: web.AppRunner | None = None

    # -- serving -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self.sync)
        app.router.add_post("/v1/images/edits", self.sync)
        app.router.add_get("/files/{name}", self.file)
        app.router.add_get("/missing/{name}", self.missing)
        app.router.add_get("/huge/{name}", self.huge_image)
        app.router.add_get("/queue/{owner}/{alias}/requests/{id}/status", self.status)
        app.router.add_put("/queue/{owner}/{alias}/requests/{id}/cancel", self.cancel)
        app.router.add_get("/queue/{owner}/{alias}/requests/{id}", self.result)
        app.router.add_post("/queue/{owner}/{alias}", self.submit)
        app.router.add_post("/queue/{owner}/{alias}/{path:.+}", self.submit)
        return app

    async def start(self) -> None:
        # A short keep-alive lets the gateway's idle pooled connections close soon
        # after a load, so its open descriptors can be compared with a baseline.
        self._runner = web.AppRunner(self.app(), handler_cancellation=True,
                                     keepalive_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self._closing.set()
        self._sync_open.set()
        self.accepting.set()
        self.answering_polls.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> ChaosUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def release_sync(self) -> None:
        self._sync_open.set()

    # -- choosing a fault ----------------------------------------------------------

    def pick(self, tag: str, endpoint: str) -> Fault:
        number = self._per_call[(tag, endpoint)]
        self._per_call[(tag, endpoint)] += 1
        rng = random.Random(f"{self.seed}/{tag}/{endpoint}/{number}")
        fault = Fault.OK
        if rng.random() < self.rate:
            allowed = [f for f in ENDPOINT_FAULTS[endpoint] if self.weights.get(f, 0) > 0]
            if allowed:
                fault = rng.choices(allowed, [self.weights[f] for f in allowed])[0]
        self.history[tag].append((endpoint, fault))
        return fault

    async def _common(self, request: web.Request, fault: Fault, shape: str
                      ) -> web.StreamResponse | None:
        """The answer for a fault every endpoint shares, or None to go on."""
        if fault is Fault.HTTP_500:
            return _json(_error_body(shape, "The server had an error while processing "
                                     "your request."), status=500)
        if fault is Fault.HTTP_502:
            return web.Response(status=502, content_type="text/html",
                                text="<html><body><h1>502 Bad Gateway</h1></body></html>")
        if fault is Fault.RATE_LIMITED:
            return _json(_error_body(shape, "Rate limit reached, slow down."), status=429,
                         headers={"Retry-After": "1"})
        if fault is Fault.HANG:
            await self._hang()
            return _json(_error_body(shape, "timed out"), status=504)
        if fault is Fault.BAD_JSON:
            return web.Response(status=200, content_type="application/json",
                                text='{"created": 1, "data": [{"b64_json": "iVBOR')
        if fault is Fault.HUGE_BODY:
            return await self._stream(request, "application/json",
                                      b'{"created": 1, "data": [{"b64_json": "',
                                      filler=b"A" * _CHUNK, tail=b'"}]}')
        return None

    async def _hang(self) -> None:
        try:
            async with asyncio.timeout(self.hang_seconds):
                await self._closing.wait()
        except TimeoutError:
            pass

    async def _stream(self, request: web.Request, content_type: str, head: bytes, *,
                      filler: bytes | None = None, tail: bytes = b"") -> web.StreamResponse:
        """HUGE_BYTES of body, chunked, written from one buffer; stops when the
        client hangs up."""
        response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = filler if filler is not None else self._zeros
        try:
            await response.write(head)
            for _ in range(HUGE_BYTES // len(chunk)):
                await response.write(chunk)
            await response.write(tail)
        except (ConnectionError, RuntimeError):
            return response
        return response

    async def _cut(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """Headers promising the whole body, half of it, then the connection closes."""
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError

    # -- the OpenAI-compatible API ---------------------------------------------------

    async def sync(self, request: web.Request) -> web.StreamResponse:
        self.calls["sync"] += 1
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return _json(_error_body("openai", "Incorrect API key provided.",
                                     code="invalid_api_key"), status=401)
        body = await request.json() if request.content_type == "application/json" \
            else await _form_fields(request)
        tag = tag_of(str(body.get("prompt", "")))
        if body.get("model") in self.hold_sync:
            self.waiting += 1
            try:
                await self._sync_open.wait()
            finally:
                self.waiting -= 1
        self.sync_started[tag] += 1
        fault = self.pick(tag, "sync")
        early = await self._common(request, fault, "openai")
        if early is not None:
            return early
        origin = _origin(request)
        if fault is Fault.MISSING_FIELD:
            return _json({"created": 1})
        if fault is Fault.DEAD_IMAGE:
            return _json({"created": 1, "data": [{"url": f"{origin}/missing/{tag}.png"}]})
        if fault is Fault.HUGE_IMAGE:
            return _json({"created": 1, "data": [{"url": f"{origin}/huge/{tag}.png"}]})
        n = int(body.get("n", 1))
        if random.Random(f"{self.seed}/{tag}/format").random() < 0.5:
            items = [{"b64_json": base64.b64encode(self.image).decode()} for _ in range(n)]
        else:
            items = [{"url": f"{origin}/files/{tag}-{i}.png"} for i in range(n)]
        answer = json.dumps({"created": 1, "data": items}).encode()
        if fault is Fault.CUT:
            return await self._cut(request, answer)
        return web.Response(body=answer, content_type="application/json")

    # -- the fal queue ----------------------------------------------------------------

    def _fal_unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Key {self.key}":
            return _json({"detail": "No user found for Key ID and Secret"}, status=401)
        return None

    async def submit(self, request: web.Request) -> web.StreamResponse:
        self.calls["submit"] += 1
        if (refused := self._fal_unauthorized(request)) is not None:
            return refused
        body = await request.json()
        if not self.accepting.is_set():
            self.submits_waiting += 1
            try:
                await self.accepting.wait()
            finally:
                self.submits_waiting -= 1
        tag = tag_of(str(body.get("prompt", "")))
        fault = self.pick(tag, "submit")
        early = await self._common(request, fault, "fal")
        if early is not None:
            return early
        if fault is Fault.MISSING_FIELD:
            return _json({"status": "IN_QUEUE", "queue_position": 0})
        match = request.match_info
        root = f"{match['owner']}/{match['alias']}"
        queued = QueuedRequest(id=str(uuid.uuid4()), tag=tag, root=root)
        base = f"{_origin(request)}/queue/{root}/requests/{queued.id}"
        answer = json.dumps({"status": "IN_QUEUE", "request_id": queued.id,
                             "response_url": base, "status_url": f"{base}/status",
                             "cancel_url": f"{base}/cancel", "queue_position": 0}).encode()
        if fault is Fault.CUT:
            return await self._cut(request, answer)
        self._queued[queued.id] = queued
        self.accepted[tag] += 1
        return web.Response(body=answer, content_type="application/json")

    def _find(self, request: web.Request) -> QueuedRequest | None:
        match = request.match_info
        found = self._queued.get(match["id"])
        if found is None or found.root != f"{match['owner']}/{match['alias']}":
            return None
        return found

    async def status(self, request: web.Request) -> web.StreamResponse:
        self.calls["status"] += 1
        if (refused := self._fal_unauthorized(request)) is not None:
            return refused
        if not self.answering_polls.is_set():
            self.polls_waiting += 1
            try:
                await self.answering_polls.wait()
            finally:
                self.polls_waiting -= 1
        found = self._find(request)
        if found is None:
            return _json({"detail": "Request not found"}, status=404)
        fault = self.pick(found.tag, "status")
        early = await self._common(request, fault, "fal")
        if early is not None:
            return early
        if fault is Fault.MISSING_FIELD:
            return _json({"logs": None, "queue_position": 0})
        found.polls += 1
        if found.polls < self.polls_to_complete or self.hold_async:
            state, status = ("IN_QUEUE", 202) if found.polls == 1 else ("IN_PROGRESS", 200)
            answer = json.dumps({"status": state, "logs": None, "queue_position": 0}).encode()
        else:
            status = 200
            answer = json.dumps({"status": "COMPLETED", "logs": None, "error": None,
                                 "error_type": None,
                                 "metrics": {"inference_time": 0.5}}).encode()
        if fault is Fault.CUT:
            return await self._cut(request, answer)
        return web.Response(body=answer, status=status, content_type="application/json")

    async def result(self, request: web.Request) -> web.StreamResponse:
        self.calls["result"] += 1
        if (refused := self._fal_unauthorized(request)) is not None:
            return refused
        found = self._find(request)
        if found is None:
            return _json({"detail": "Request not found"}, status=404)
        fault = self.pick(found.tag, "result")
        early = await self._common(request, fault, "fal")
        if early is not None:
            return early
        origin = _origin(request)
        if fault is Fault.MISSING_FIELD:
            return _json({"seed": 42, "has_nsfw_concepts": [False]})
        url = f"{origin}/files/{found.tag}.png"
        if fault is Fault.DEAD_IMAGE:
            url = f"{origin}/missing/{found.tag}.png"
        elif fault is Fault.HUGE_IMAGE:
            url = f"{origin}/huge/{found.tag}.png"
        answer = json.dumps({"images": [{"url": url, "width": 48, "height": 48,
                                         "content_type": "image/png"}],
                             "seed": 42, "has_nsfw_concepts": [False],
                             "prompt": "", "timings": {"inference": 0.5}}).encode()
        if fault is Fault.CUT:
            return await self._cut(request, answer)
        return web.Response(body=answer, content_type="application/json")

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        self.calls["cancel"] += 1
        if (refused := self._fal_unauthorized(request)) is not None:
            return refused
        if self._find(request) is None:
            return _json({"detail": "Request not found"}, status=404)
        return _json({"status": "CANCELLATION_REQUESTED"}, status=202)

    # -- the CDN ---------------------------------------------------------------------

    async def file(self, request: web.Request) -> web.StreamResponse:
        self.calls["file"] += 1
        return web.Response(body=self.image, content_type="image/png")

    async def missing(self, request: web.Request) -> web.StreamResponse:
        self.calls["missing"] += 1
        return web.Response(status=404, content_type="application/xml",
                            text="<Error><Code>NoSuchKey</Code></Error>")

    async def huge_image(self, request: web.Request) -> web.StreamResponse:
        self.calls["huge"] += 1
        return await self._stream(request, "image/png", b"\x89PNG\r\n\x1a\n")


async def _form_fields(request: web.Request) -> dict[str, str]:
    """The text parts of a multipart body (file parts are read and dropped)."""
    fields = {}
    reader = await request.multipart()
    async for part in reader:
        if isinstance(part, BodyPartReader):
            data = await part.read()
            if part.filename is None and part.name:
                fields[part.name] = data.decode()
    return fields


def tag_of(prompt: str) -> str:
    match = _TAG.search(prompt)
    return match.group(1) if match else "untagged"


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


def _json(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
          ) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def _error_body(shape: str, message: str, code: str | None = None) -> Any:
    if shape == "fal":
        return {"detail": message}
    return {"error": {"message": message, "type": "server_error", "param": None,
                      "code": code}}
