"""A fake fal.ai queue (queue.fal.run), answering as the real one does.

Submit ``POST /{owner}/{alias}[/{path}]`` -> ``IN_QUEUE`` with status, response and
cancel URLs that drop the sub-path (``/fal-ai/flux/requests/{id}/status`` for
``fal-ai/flux/dev``); the sub-path URLs do not exist. Status answers 202 while
queued, then 200 ``IN_PROGRESS``, then ``COMPLETED`` (with ``error`` when told to);
the result lists images on this server's ``/files/`` (or as ``data:`` URIs).
Errors ``{"detail": "..."}``, and 422 ``{"detail": [{"loc", "msg", "type"}]}``.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.scripted import Fake, is_image_uri, origin, png, read_json

UNAUTHORIZED = {"detail": "No user found for Key ID and Secret"}
BANANA_RATIOS = {"21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16"}
FLUX_SIZES = {"square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3",
              "landscape_16_9"}


@dataclass
class FalRequest:
    id: str
    app: str
    root: str
    input: dict[str, Any]
    polls: int = 0
    completed: bool = False
    canceled: bool = False
    error: str | None = None


@dataclass
class FakeFal(Fake):
    key: str = "fal-key-id:fal-secret"
    #: Status polls answered 202 IN_QUEUE, then polls answered IN_PROGRESS.
    queued_polls: int = 1
    running_polls: int = 1
    #: While True, a request never gets past IN_PROGRESS.
    hold: bool = False
    #: COMPLETED with this error (and error_type) instead of a result.
    error: str | None = None
    error_type: str = "generation_error"
    #: The response URL answers this (status, body) although the status said COMPLETED.
    result_error: tuple[int, Any] | None = None
    data_uris: bool = False
    nsfw: bool = False
    requests: dict[str, FalRequest] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/files/{name}", self.serve_file)
        app.router.add_get("/{owner}/{alias}/requests/{id}/status", self.status)
        app.router.add_put("/{owner}/{alias}/requests/{id}/cancel", self.cancel)
        app.router.add_get("/{owner}/{alias}/requests/{id}", self.result)
        app.router.add_post("/{owner}/{alias}", self.submit)
        app.router.add_post("/{owner}/{alias}/{path:.+}", self.submit)
        return app

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Key {self.key}":
            return self.json(UNAUTHORIZED, status=401)
        return None

    async def submit(self, request: web.Request) -> web.Response:
        early = self.hit("submit") or self._unauthorized(request)
        if early is not None:
            return early
        body = await read_json(request)
        match = request.match_info
        root = f"{match['owner']}/{match['alias']}"
        app_id = f"{root}/{match['path']}" if match.get("path") else root
        problems = _validate(app_id, match["alias"], body)
        if problems:
            return self.json({"detail": problems}, status=422)
        fal_request = FalRequest(id=str(uuid.uuid4()), app=app_id, root=root, input=body)
        self.requests[fal_request.id] = fal_request
        base = f"{origin(request)}/{root}/requests/{fal_request.id}"
        return self.json({"status": "IN_QUEUE", "request_id": fal_request.id,
                          "response_url": base, "status_url": f"{base}/status",
                          "cancel_url": f"{base}/cancel", "logs": None, "metrics": {},
                          "queue_position": 0})

    def _find(self, request: web.Request) -> FalRequest | None:
        match = request.match_info
        found = self.requests.get(match["id"])
        if found is None or found.root != f"{match['owner']}/{match['alias']}":
            return None
        return found

    async def status(self, request: web.Request) -> web.Response:
        early = self.hit("status") or self._unauthorized(request)
        if early is not None:
            return early
        found = self._find(request)
        if found is None:
            return self.json({"detail": "Request not found"}, status=404)
        found.polls += 1
        response_url = f"{origin(request)}/{found.root}/requests/{found.id}"
        if found.polls <= self.queued_polls and not found.completed:
            return self.json({"status": "IN_QUEUE", "queue_position": 0,
                              "response_url": response_url}, status=202)
        if not found.completed and (self.hold or
                                    found.polls <= self.queued_polls + self.running_polls):
            return self.json({"status": "IN_PROGRESS", "logs": None,
                              "response_url": response_url})
        if not found.completed:
            found.completed = True
            found.error = self.error
        return self.json({"status": "COMPLETED", "logs": None,
                          "metrics": {"inference_time": 1.25}, "response_url": response_url,
                          "error": found.error,
                          "error_type": self.error_type if found.error else None})

    async def result(self, request: web.Request) -> web.Response:
        early = self.hit("result") or self._unauthorized(request)
        if early is not None:
            return early
        found = self._find(request)
        if found is None:
            return self.json({"detail": "Request not found"}, status=404)
        if not found.completed:
            return self.json({"detail": "Request is still in progress"}, status=400)
        if found.error:
            return self.json({"detail": found.error}, status=500)
        if self.result_error is not None:
            return self.json(self.result_error[1], status=self.result_error[0])
        count = int(found.input.get("num_images", 1))
        files = []
        for i in range(count):
            data = png(64 + i, 48)
            url = (f"data:image/png;base64,{base64.b64encode(data).decode()}" if self.data_uris
                   else self.add_file(origin(request), f"{found.id}-{i}.png", data))
            files.append({"url": url, "width": 64 + i, "height": 48,
                          "content_type": "image/png", "file_name": f"{i}.png",
                          "file_size": len(data)})
        output: dict[str, Any] = {"images": files, "seed": 1234}
        if found.app.split("/")[1].startswith("flux"):
            output.update(has_nsfw_concepts=[self.nsfw] * count, prompt=found.input["prompt"],
                          timings={"inference": 1.1})
        else:
            output["description"] = "Here is the image you asked for."
        return self.json(output)

    async def cancel(self, request: web.Request) -> web.Response:
        early = self.hit("cancel") or self._unauthorized(request)
        if early is not None:
            return early
        found = self._find(request)
        if found is None:
            return self.json({"detail": "Request not found"}, status=404)
        if found.completed:
            return self.json({"status": "ALREADY_COMPLETED"}, status=400)
        found.canceled = True
        return self.json({"status": "CANCELLATION_REQUESTED"}, status=202)


def _missing(name: str) -> dict[str, Any]:
    return {"loc": ["body", name], "msg": "field required", "type": "value_error.missing"}


def _invalid(name: str, message: str) -> dict[str, Any]:
    return {"loc": ["body", name], "msg": message, "type": "value_error"}


def _validate(app_id: str, alias: str, body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return [_invalid("body", "value is not a valid dict")]
    problems = []
    if not isinstance(body.get("prompt"), str):
        problems.append(_missing("prompt"))
    num = body.get("num_images", 1)
    if not isinstance(num, int) or not 1 <= num <= 4:
        problems.append(_invalid("num_images", "ensure this value is between 1 and 4"))
    if alias.startswith("flux"):
        size = body.get("image_size")
        if size is not None and size not in FLUX_SIZES and not (
                isinstance(size, dict) and all(isinstance(size.get(k), int)
                                               for k in ("width", "height"))):
            problems.append(_invalid("image_size", "invalid image size"))
        if body.get("output_format", "jpeg") not in ("jpeg", "png"):
            problems.append(_invalid("output_format", "unexpected value; permitted: 'jpeg', "
                                     "'png'"))
        if app_id.endswith("image-to-image") and not is_image_uri(body.get("image_url")):
            problems.append(_missing("image_url"))
        return problems
    if body.get("aspect_ratio", "1:1") not in BANANA_RATIOS | {"auto"}:
        problems.append(_invalid("aspect_ratio", "unexpected value; permitted: "
                                 + ", ".join(sorted(BANANA_RATIOS))))
    if body.get("output_format", "png") not in ("jpeg", "png", "webp"):
        problems.append(_invalid("output_format", "unexpected value"))
    if "resolution" in body and body["resolution"] not in ("1K", "2K", "4K"):
        problems.append(_invalid("resolution", "unexpected value; permitted: '1K', '2K', '4K'"))
    if app_id.endswith("/edit"):
        urls = body.get("image_urls")
        if not isinstance(urls, list) or not urls:
            problems.append(_missing("image_urls"))
        elif not all(is_image_uri(u) for u in urls):
            problems.append(_invalid("image_urls", "not a URL or data URI"))
    return problems
