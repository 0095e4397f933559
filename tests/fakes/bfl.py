"""A fake Black Forest Labs API on TWO loopback servers, like the real one.

The API host takes ``POST /v1/{model}`` and answers ``{"id", "polling_url",
"cost", "input_mp", "output_mp"}``; the polling URL points at a second server (the
real API hands out regional hosts such as api.us1.bfl.ai), which answers
``GET /v1/get_result?id=`` and also serves the result images (BFL's delivery
URLs). Both check ``x-key`` (missing or wrong: 403 ``{"detail": ...}``). Bodies
are checked like BFL's FastAPI validation (422 ``{"detail": [{"loc", "msg",
"type"}]}``): ``prompt`` required, FLUX.2 sizes in multiples of 16, FLUX1.x in
multiples of 32 within 256-1440.

Each task answers ``Pending`` ``pending_polls`` times, then its outcome.
``script`` holds behaviours for the next submits in order (see ``OUTCOMES`` and
``SUBMIT_ERRORS``); an empty script means "ok". ``submits``, ``polls`` and
``downloads`` count requests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fakes.images import solid

OUTCOMES = frozenset({"ok", "error", "request_moderated", "content_moderated", "lost"})
SUBMIT_ERRORS: dict[str, tuple[int, Any]] = {
    "http_402": (402, {"detail": "Insufficient credits. Please add credits to your account "
                                 "at https://api.bfl.ai."}),
    "http_429": (429, {"detail": "You have exceeded the number of active tasks (24). Please "
                                 "wait for some to finish."}),
    "http_500": (500, {"detail": "Internal Server Error"}),
    "http_503": (503, "<html><body><h1>503 Service Unavailable</h1></body></html>"),
}
MODELS = frozenset({"flux-2-pro", "flux-2-max", "flux-2-flex", "flux-kontext-pro",
                    "flux-kontext-max", "flux-pro-1.1", "flux-pro-1.1-ultra", "flux-dev"})


@dataclass
class Task:
    id: str
    index: int
    outcome: str
    body: dict[str, Any]
    polls: int = 0
    image: bytes = b""


@dataclass
class FakeBFL:
    api_key: str = "bfl-fake-key"
    pending_polls: int = 3
    script: list[str] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    submits: int = 0
    polls: int = 0
    downloads: int = 0
    url: str = ""  # the API host while running
    poll_url: str = ""  # the polling/delivery host while running

    @property
    def order(self) -> list[Task]:
        return sorted(self.tasks.values(), key=lambda t: t.index)

    def api_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/{model}", self.submit)
        return app

    def poll_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/get_result", self.get_result)
        app.router.add_get("/results/{id}/sample.jpeg", self.sample)
        return app

    def _denied(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-key")
        if not key:
            return web.json_response({"detail": "Not authenticated"}, status=403)
        if key != self.api_key:
            return web.json_response({"detail": "Not authenticated - Invalid Authentication"},
                                     status=403)
        return None

    async def submit(self, request: web.Request) -> web.Response:
        self.submits += 1
        denied = self._denied(request)
        if denied is not None:
            return denied
        model = request.match_info["model"]
        if model not in MODELS:
            return web.json_response({"detail": "Not Found"}, status=404)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"detail": [{"loc": ["body"], "msg": "JSON decode error",
                                                  "type": "json_invalid"}]}, status=422)
        problems = _validate(model, body)
        if problems:
            return web.json_response({"detail": problems}, status=422)
        behaviour = self.script.pop(0) if self.script else "ok"
        if behaviour in SUBMIT_ERRORS:
            status, payload = SUBMIT_ERRORS[behaviour]
            if isinstance(payload, str):
                return web.Response(status=status, text=payload, content_type="text/html")
            return web.json_response(payload, status=status)
        assert behaviour in OUTCOMES, behaviour
        task_id = str(uuid.uuid4())
        index = len(self.tasks)
        self.tasks[task_id] = Task(id=task_id, index=index, outcome=behaviour, body=body,
                                   image=solid((40 * index % 256, 90, 200), "JPEG"))
        return web.json_response({"id": task_id,
                                  "polling_url": f"{self.poll_url}/v1/get_result?id={task_id}",
                                  "cost": 3.0, "input_mp": 0.0, "output_mp": 1.05})

    async def get_result(self, request: web.Request) -> web.Response:
        self.polls += 1
        denied = self._denied(request)
        if denied is not None:
            return denied
        task_id = request.query.get("id", "")
        task = self.tasks.get(task_id)
        base: dict[str, Any] = {"id": task_id, "result": None, "progress": None,
                                "details": None, "preview": None}
        if task is None or task.outcome == "lost":
            return web.json_response({**base, "status": "Task not found"})
        task.polls += 1
        if task.polls <= self.pending_polls:
            return web.json_response({**base, "status": "Pending",
                                      "progress": round(task.polls / (self.pending_polls + 1),
                                                        2)})
        if task.outcome == "ok":
            return web.json_response({**base, "status": "Ready", "result": {
                "sample": f"{self.poll_url}/results/{task.id}/sample.jpeg",
                "prompt": task.body["prompt"], "seed": task.body.get("seed", 1234),
                "start_time": 1_700_000_000.0, "end_time": 1_700_000_004.5,
                "duration": 4.5}})
        if task.outcome == "error":
            return web.json_response({**base, "status": "Error"})
        status = {"request_moderated": "Request Moderated",
                  "content_moderated": "Content Moderated"}[task.outcome]
        return web.json_response({**base, "status": status,
                                  "details": {"Moderation Reasons": ["Derivative Works Filter"]}})

    async def sample(self, request: web.Request) -> web.Response:
        self.downloads += 1
        task = self.tasks.get(request.match_info["id"])
        if task is None or task.outcome != "ok":
            return web.Response(status=404, text="Not Found")
        return web.Response(body=task.image, content_type="image/jpeg")


def _validate(model: str, body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary",
                 "type": "model_attributes_type"}]
    problems = []
    if not isinstance(body.get("prompt"), str):
        problems.append({"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"})
    flux2 = model.startswith("flux-2-")
    multiple, low, high = (16, 64, 4096) if flux2 else (32, 256, 1440)
    for name in ("width", "height"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int):
            problems.append({"loc": ["body", name], "msg": "Input should be a valid integer",
                             "type": "int_type"})
        elif value % multiple:
            problems.append({"loc": ["body", name],
                             "msg": f"Input should be a multiple of {multiple}",
                             "type": "multiple_of"})
        elif not low <= value <= high:
            problems.append({"loc": ["body", name],
                             "msg": f"Input should be between {low} and {high}",
                             "type": "value_error"})
    if body.get("output_format") not in (None, "jpeg", "png"):
        problems.append({"loc": ["body", "output_format"],
                         "msg": "Input should be 'jpeg' or 'png'", "type": "enum"})
    return problems


@asynccontextmanager
async def running(fake: FakeBFL) -> AsyncIterator[FakeBFL]:
    """Serve the API and the polling host on two loopback ports."""
    api = TestServer(fake.api_app(), host="127.0.0.1")
    poller = TestServer(fake.poll_app(), host="127.0.0.1")
    await api.start_server()
    await poller.start_server()
    fake.url = str(api.make_url("")).rstrip("/")
    fake.poll_url = str(poller.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        await api.close()
        await poller.close()
