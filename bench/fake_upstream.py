"""The benchmark's upstream: answers at once, so whatever is measured is the path
in front of it. Run as its own process: ``python bench/fake_upstream.py PORT [POLLS]``.

* OpenAI images: ``POST /v1/images/generations`` answers a small real PNG, as
  ``b64_json`` (the default, as gpt-image-1 does) or, with
  ``"response_format": "url"``, as a link to ``/files/image.png``.
* ``/slow/v1/images/generations``: the same, but a generation takes
  ``SLOW_MS`` as a real one takes seconds; with ``"stream": true`` it answers
  server-sent events as OpenAI does, ``partial_images`` partial events spread over
  that time, then the completed one (scenario 7).
* fal queue: ``POST /{owner}/{alias}`` queues a request whose status answers
  ``IN_PROGRESS`` until the POLLS-th status poll, which answers ``COMPLETED``; the
  result lists the PNG on ``/files/``. Cancel is accepted.

Shapes follow the real APIs (see shared/PROVIDERS.md) closely enough for the
gateway's adapters; auth headers are not checked. ``GET /stats`` counts calls.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import sys
import time
from collections import Counter
from typing import Any

import orjson
from aiohttp import web
from PIL import Image

SLOW_MS = 400
USAGE = {"input_tokens": 8, "output_tokens": 16, "total_tokens": 24,
         "input_tokens_details": {"text_tokens": 8, "image_tokens": 0}}


def small_png() -> bytes:
    image = Image.new("RGB", (64, 64))
    image.putdata([(x * 4, y * 4, 128) for y in range(64) for x in range(64)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class Fake:
    def __init__(self, origin: str, polls: int) -> None:
        self.origin = origin
        self.polls = polls
        self.png = small_png()
        self.b64 = base64.b64encode(self.png).decode("ascii")
        self.counts: Counter[str] = Counter()
        self.queue: dict[str, int] = {}
        self.ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/images/generations", self.generate)
        app.router.add_post("/slow/v1/images/generations", self.generate_slowly)
        app.router.add_get("/files/{name}", self.file)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/{owner}/{alias}/requests/{id}/status", self.status)
        app.router.add_get("/{owner}/{alias}/requests/{id}", self.result)
        app.router.add_put("/{owner}/{alias}/requests/{id}/cancel", self.cancel)
        app.router.add_post("/{owner}/{alias}", self.submit)
        app.router.add_post("/{owner}/{alias}/{path:.+}", self.submit)
        return app

    @staticmethod
    def json(data: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(data), status=status,
                            content_type="application/json")

    async def generate(self, request: web.Request) -> web.Response:
        self.counts["generate"] += 1
        body = orjson.loads(await request.read())
        n = int(body.get("n") or 1)
        if body.get("response_format") == "url":
            item: dict[str, Any] = {"url": f"{self.origin}/files/image.png"}
        else:
            item = {"b64_json": self.b64}
        return self.json({"created": int(time.time()), "data": [item] * n,
                          "usage": {"input_tokens": 8, "output_tokens": 16,
                                    "total_tokens": 24}})

    async def generate_slowly(self, request: web.Request) -> web.StreamResponse:
        self.counts["generate_slowly"] += 1
        body = orjson.loads(await request.read())
        if not body.get("stream"):
            await asyncio.sleep(SLOW_MS / 1000)
            return self.json({"created": int(time.time()), "data": [{"b64_json": self.b64}],
                              "usage": USAGE})
        partials = int(body.get("partial_images") or 0)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        common = {"size": "1024x1024", "quality": "high", "background": "opaque",
                  "output_format": "png", "created_at": int(time.time()), "b64_json": self.b64}
        for index in range(partials):
            await asyncio.sleep(SLOW_MS / 1000 / (partials + 1))
            await self._event(response, {"type": "image_generation.partial_image",
                                         "partial_image_index": index, **common})
        await asyncio.sleep(SLOW_MS / 1000 / (partials + 1))
        await self._event(response, {"type": "image_generation.completed", **common,
                                     "usage": USAGE})
        await response.write_eof()
        return response

    @staticmethod
    async def _event(response: web.StreamResponse, data: dict[str, Any]) -> None:
        await response.write(f"event: {data['type']}\ndata: ".encode() + orjson.dumps(data)
                             + b"\n\n")

    async def file(self, request: web.Request) -> web.Response:
        self.counts["file"] += 1
        return web.Response(body=self.png, content_type="image/png")

    async def stats(self, request: web.Request) -> web.Response:
        return self.json(dict(self.counts))

    def _urls(self, request: web.Request, request_id: str) -> dict[str, str]:
        base = (f"{self.origin}/{request.match_info['owner']}/{request.match_info['alias']}"
                f"/requests/{request_id}")
        return {"status_url": f"{base}/status", "response_url": base,
                "cancel_url": f"{base}/cancel"}

    async def submit(self, request: web.Request) -> web.Response:
        self.counts["submit"] += 1
        await request.read()
        request_id = f"req-{next(self.ids)}"
        self.queue[request_id] = 0
        return self.json({"request_id": request_id, "status": "IN_QUEUE",
                          "queue_position": 0, **self._urls(request, request_id)})

    async def status(self, request: web.Request) -> web.Response:
        self.counts["status"] += 1
        request_id = request.match_info["id"]
        polls = self.queue.get(request_id)
        if polls is None:
            return self.json({"detail": "Request not found"}, status=404)
        polls += 1
        self.queue[request_id] = polls
        done = polls >= self.polls
        return self.json({"status": "COMPLETED" if done else "IN_PROGRESS",
                          "request_id": request_id, "logs": None, "metrics": {},
                          **self._urls(request, request_id)})

    async def result(self, request: web.Request) -> web.Response:
        self.counts["result"] += 1
        request_id = request.match_info["id"]
        if self.queue.pop(request_id, None) is None:
            return self.json({"detail": "Request not found"}, status=404)
        return self.json({"images": [{"url": f"{self.origin}/files/image.png",
                                      "content_type": "image/png", "width": 64,
                                      "height": 64}],
                          "seed": 42, "has_nsfw_concepts": [False], "prompt": "bench"})

    async def cancel(self, request: web.Request) -> web.Response:
        self.counts["cancel"] += 1
        self.queue.pop(request.match_info["id"], None)
        return self.json({"status": "CANCELLATION_REQUESTED"})


async def serve(port: int, polls: int) -> None:
    fake = Fake(f"http://127.0.0.1:{port}", polls)
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


def main() -> None:
    port = int(sys.argv[1])
    polls = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port, polls))
    else:
        uvloop.run(serve(port, polls))


if __name__ == "__main__":
    main()
