"""A fake Replicate API (api.replicate.com/v1), answering as the real one does.

``POST /v1/models/{owner}/{name}/predictions`` (201) and ``POST /v1/predictions``
(by version) create a prediction (``starting``); ``Prefer: wait=N`` returns it
finished when ``wait_finishes``. ``GET /v1/predictions/{id}`` moves it through
``processing`` to ``succeeded`` (output a list of URLs for flux-schnell/flux-dev, a
single URL for the others), ``failed`` (HTTP 200, ``error`` set) or ``canceled``.
Errors are RFC 7807 problem documents.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes.scripted import Fake, is_image_uri, origin, png, read_json

UNAUTHORIZED = {"title": "Unauthenticated",
                "detail": "You did not pass a valid authentication token", "status": 401}
NOT_FOUND = {"title": "Not found", "detail": "The requested resource could not be found.",
             "status": 404}
LIST_OUTPUT = frozenset({"black-forest-labs/flux-schnell", "black-forest-labs/flux-dev"})
MODELS: dict[str, dict[str, Any]] = {
    "black-forest-labs/flux-schnell": {"formats": {"webp", "jpg", "png"}, "custom": False},
    "black-forest-labs/flux-dev": {"formats": {"webp", "jpg", "png"}, "custom": False},
    "black-forest-labs/flux-1.1-pro": {"formats": {"webp", "jpg", "png"}, "custom": True},
    "black-forest-labs/flux-kontext-pro": {"formats": {"jpg", "png"}, "custom": False},
}
RATIOS = {"1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"}
VERSIONS = {"5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637":
            "black-forest-labs/flux-dev"}
TERMINAL = frozenset({"succeeded", "failed", "canceled"})


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class FakeReplicate(Fake):
    key: str = "r8_test_token"
    #: Polls answered ``processing`` before the prediction ends.
    processing_polls: int = 1
    hold: bool = False
    #: End as ``failed`` with this error (HTTP 200), or as ``canceled``.
    fail_with: str | None = None
    end_canceled: bool = False
    #: With ``Prefer: wait``, answer the create call with the finished prediction.
    wait_finishes: bool = True
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    prefer_headers: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/files/{name}", self.serve_file)
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self.create)
        app.router.add_post("/v1/predictions", self.create)
        app.router.add_get("/v1/predictions/{id}", self.get)
        app.router.add_post("/v1/predictions/{id}/cancel", self.cancel)
        return app

    def problem(self, body: dict[str, Any], headers: dict[str, str] | None = None
                ) -> web.Response:
        return web.json_response(body, status=body["status"], headers=headers,
                                 content_type="application/problem+json")

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") not in (f"Bearer {self.key}",
                                                       f"Token {self.key}"):
            return self.problem(UNAUTHORIZED)
        return None

    async def create(self, request: web.Request) -> web.Response:
        early = self.hit("create") or self._unauthorized(request)
        if early is not None:
            return early
        body = await read_json(request)
        version: Any
        if "owner" in request.match_info:
            model = f"{request.match_info['owner']}/{request.match_info['name']}"
            version = "dp-" + secrets.token_hex(16)
        else:
            version = body.get("version") if isinstance(body, dict) else None
            model = VERSIONS.get(str(version), "")
        if model not in MODELS:
            return self.problem(NOT_FOUND)
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return self.problem({"title": "Invalid request body", "status": 422,
                                 "detail": "- input: Required"})
        problems = _validate(model, body["input"])
        if problems:
            return self.problem({
                "title": "Input validation failed", "status": 422,
                "detail": "\n".join(f"- input.{f}: {d}" for f, d in problems),
                "invalid_fields": [{"type": "invalid", "field": f"input.{f}",
                                    "description": d} for f, d in problems]})
        prediction_id = secrets.token_hex(13)[:26]
        base = f"{origin(request)}/v1/predictions/{prediction_id}"
        prediction: dict[str, Any] = {
            "id": prediction_id, "model": model, "version": version, "input": body["input"],
            "logs": "", "output": None, "data_removed": False, "error": None,
            "status": "starting", "created_at": _now(),
            "urls": {"cancel": f"{base}/cancel", "get": base,
                     "stream": f"https://stream.replicate.com/v1/files/{prediction_id}",
                     "web": f"https://replicate.com/p/{prediction_id}"}}
        self.predictions[prediction_id] = prediction
        self.polls[prediction_id] = 0
        prefer = request.headers.get("Prefer")
        self.prefer_headers.append(prefer)
        if prefer and re.fullmatch(r"wait(=\d+)?", prefer) and self.wait_finishes \
                and not self.hold:
            self._finish(prediction, origin(request))
        return self.json(prediction, status=201)

    async def get(self, request: web.Request) -> web.Response:
        early = self.hit("get") or self._unauthorized(request)
        if early is not None:
            return early
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return self.problem(NOT_FOUND)
        if prediction["status"] not in TERMINAL:
            self.polls[prediction["id"]] += 1
            if self.hold or self.polls[prediction["id"]] <= self.processing_polls:
                prediction.update(status="processing", started_at=_now())
            else:
                self._finish(prediction, origin(request))
        return self.json(prediction)

    async def cancel(self, request: web.Request) -> web.Response:
        early = self.hit("cancel") or self._unauthorized(request)
        if early is not None:
            return early
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return self.problem(NOT_FOUND)
        if prediction["status"] not in TERMINAL:
            prediction.update(status="canceled", completed_at=_now())
        return self.json(prediction)

    def _finish(self, prediction: dict[str, Any], base: str) -> None:
        prediction.update(completed_at=_now(), metrics={"predict_time": 1.2})
        if self.fail_with is not None:
            prediction.update(status="failed", error=self.fail_with)
            return
        if self.end_canceled:
            prediction.update(status="canceled")
            return
        count = int(prediction["input"].get("num_outputs", 1))
        urls = [self.add_file(base, f"{prediction['id']}-{i}.png", png(80 + i, 60))
                for i in range(count)]
        prediction.update(status="succeeded",
                          output=urls if prediction["model"] in LIST_OUTPUT else urls[0])


def _validate(model: str, data: dict[str, Any]) -> list[tuple[str, str]]:
    spec = MODELS[model]
    problems = []
    if not isinstance(data.get("prompt"), str):
        problems.append(("prompt", "Required"))
    if model in LIST_OUTPUT:
        num = data.get("num_outputs", 1)
        if not isinstance(num, int) or not 1 <= num <= 4:
            problems.append(("num_outputs", "Must be less than or equal to 4"))
    fmt = data.get("output_format", "jpg" if "kontext" in model else "webp")
    if fmt not in spec["formats"]:
        problems.append(("output_format", f"output_format must be one of the following: "
                         f"{', '.join(sorted(spec['formats']))}"))
    ratios = RATIOS | ({"custom"} if spec["custom"] else set()) | (
        {"match_input_image"} if "kontext" in model else set())
    ratio = data.get("aspect_ratio", "1:1")
    if ratio not in ratios:
        problems.append(("aspect_ratio", f"aspect_ratio must be one of the following: "
                         f"{', '.join(sorted(ratios))}"))
    if ratio == "custom":
        for side in ("width", "height"):
            value = data.get(side)
            if not isinstance(value, int) or not 256 <= value <= 1440:
                problems.append((side, "Must be between 256 and 1440"))
    for name in ("input_image", "image", "image_prompt"):
        if name in data and not is_image_uri(data[name]):
            problems.append((name, "Does not match format 'uri'"))
    if "kontext" in model and "input_image" not in data and ratio == "match_input_image":
        problems.append(("input_image", "Required with match_input_image"))
    return problems
