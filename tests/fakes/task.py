"""A fake task-API upstream (apimodels.app), answering as the seeds 001/002/004 show.

``POST /api/v1/images/generations`` -> ``{code, msg, data: {taskId, state}}``; a
synchronous model (gpt-image-2-lite) answers ``completed`` with ``resultUrls`` at
once. ``GET /api/v1/images/generations?task_id=`` moves a task through
``processing`` to ``completed`` or ``failed`` (``failMsg``, ``failCode``). Errors are
``{code, msg, data: null}`` under the same HTTP status (400, 401, 402, 404, 500).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.scripted import Fake, decodes, is_image_uri, origin, png, read_json

FIELDS = frozenset({
    "model", "prompt", "n", "size", "aspect_ratio", "resolution", "quality", "output_format",
    "image_url", "image_urls", "image_base64", "mask_base64", "image", "mask", "callback_url",
})
MODELS = frozenset({"gemini-3-pro-image", "gemini-3-pro-image-lite", "gpt-image-2-lite",
                    "grok-image/grok-4.2-image", "nanobanana2/gemini-3.1-flash-image-preview"})
SYNC_MODELS = frozenset({"gpt-image-2-lite"})


def envelope(data: Any, code: int = 200, msg: str = "success") -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": data}


@dataclass
class FakeTask(Fake):
    key: str = "apimodels-test-key"
    #: Polls answered ``processing`` before a task ends.
    processing_polls: int = 1
    hold: bool = False
    #: End as ``failed`` with this (failMsg, failCode).
    fail_with: tuple[str, str | None] | None = None
    credits: int = 1000
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/files/{name}", self.serve_file)
        app.router.add_post("/api/v1/images/generations", self.create)
        app.router.add_get("/api/v1/images/generations", self.query)
        return app

    def error(self, status: int, msg: str) -> web.Response:
        return self.json(envelope(None, status, msg), status=status)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return self.error(401, "Unauthorized -- invalid API key")
        return None

    async def create(self, request: web.Request) -> web.Response:
        early = self.hit("submit") or self._unauthorized(request)
        if early is not None:
            return early
        body = await read_json(request)
        if not isinstance(body, dict):
            return self.error(400, "request body must be a JSON object")
        self.bodies.append(body)
        problem = _validate(body)
        if problem:
            return self.error(400, problem)
        if self.credits <= 0:
            return self.error(402, "Payment Required -- insufficient credits")
        self.credits -= 1
        task_id = "cl" + secrets.token_hex(12)
        task: dict[str, Any] = {"taskId": task_id, "state": "pending",
                                "createTime": int(time.time() * 1000), "n": body.get("n", 1)}
        self.tasks[task_id] = task
        if body["model"] in SYNC_MODELS:
            self._finish(task, origin(request))
            return self.json(envelope(_view(task)))
        return self.json(envelope({"taskId": task_id, "state": "pending"}))

    async def query(self, request: web.Request) -> web.Response:
        early = self.hit("poll") or self._unauthorized(request)
        if early is not None:
            return early
        task = self.tasks.get(request.query.get("task_id", ""))
        if task is None:
            return self.error(404, "Not Found -- task ID not found")
        if task["state"] in ("pending", "processing"):
            task["polls"] = task.get("polls", 0) + 1
            if self.hold or task["polls"] <= self.processing_polls:
                task["state"] = "processing"
            else:
                self._finish(task, origin(request))
        return self.json(envelope(_view(task)))

    def _finish(self, task: dict[str, Any], base: str) -> None:
        task["completeTime"] = int(time.time() * 1000)
        if self.fail_with is not None:
            task.update(state="failed", failMsg=self.fail_with[0], failCode=self.fail_with[1])
            return
        task.update(state="completed", resultUrls=[
            self.add_file(base, f"{task['taskId']}-{i}.png", png(72 + i, 40))
            for i in range(int(task["n"]))])


def _view(task: dict[str, Any]) -> dict[str, Any]:
    keys = ("taskId", "state", "resultUrls", "failMsg", "failCode", "createTime",
            "completeTime")
    return {k: task[k] for k in keys if k in task}


def _validate(body: dict[str, Any]) -> str | None:
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        return f"Bad Request -- unknown parameter: {unknown[0]}"
    if body.get("model") not in MODELS:
        return f"Bad Request -- unsupported model: {body.get('model')}"
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "Bad Request -- prompt is required"
    if "image_url" in body and not is_image_uri(body["image_url"]):
        return "Bad Request -- image_url must be a URL"
    urls = body.get("image_urls", [])
    if not isinstance(urls, list) or not all(is_image_uri(u) for u in urls):
        return "Bad Request -- image_urls must be a list of URLs"
    for name in ("image_base64", "mask_base64"):
        if name in body and not decodes(body[name]):
            return f"Bad Request -- {name} is not valid base64"
    return None
