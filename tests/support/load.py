"""A load of clients on every surface, each taking its job to the end as a real
client would: waiting for the callback, polling, or holding the OpenAI request;
with uploads, idempotency keys, delivery inspection, redelivery, admin calls and
the odd wrong key. And a callback receiver that counts what arrives."""

from __future__ import annotations

import asyncio
import base64
import random
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.chaos import png
from tests.support.gateway import KEY_A, KEY_B

UPLOAD = png((250, 200, 10), 40)
UPLOAD_B64 = base64.b64encode(UPLOAD).decode()


class Hooks:
    """A callback receiver: records every hit by taskId; answers 503 to the first
    attempt for some tasks, so retries happen too."""

    def __init__(self) -> None:
        self.hits: defaultdict[str, int] = defaultdict(int)
        self.arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{tag}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def handle(self, request: web.Request) -> web.Response:
        task_id = (await request.json())["data"]["taskId"]
        self.hits[task_id] += 1
        first = self.hits[task_id] == 1
        if first and zlib.crc32(request.match_info["tag"].encode()) % 4 == 0:
            return web.Response(status=503, text="busy")
        self.arrived[task_id].set()
        return web.Response(text="ok")

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class Outcome:
    surface: str
    tag: str
    job_id: str | None = None
    http_status: int | None = None
    state: str | None = None
    callback: bool = False


class Load:
    """Clients on every surface, each running its job to the end as a real client
    would (waiting on the callback, polling, or holding the OpenAI request)."""

    def __init__(self, url: str, hooks: Hooks, *, seed: int, admin_token: str,
                 workers: int = 128) -> None:
        self.url = url
        self.hooks = hooks
        self.seed = seed
        self.admin_token = admin_token
        self.workers = workers
        self.rng = random.Random(seed)
        self.outcomes: list[Outcome] = []
        #: What a client would have noticed: unexpected answers, errors.
        self.problems: list[str] = []
        #: Wrong keys it sent: none may show up in a log.
        self.wrong_keys: list[str] = []

    async def go(self, count: int, prefix: str) -> None:
        jobs = iter(range(count))
        connector = aiohttp.TCPConnector(limit=self.workers * 2)
        async with aiohttp.ClientSession(connector=connector) as http:
            await asyncio.gather(*(self._worker(http, jobs, prefix)
                                   for _ in range(self.workers)))

    async def _worker(self, http: aiohttp.ClientSession, jobs: Iterator[int],
                      prefix: str) -> None:
        for number in jobs:
            tag = f"{prefix}{number}"
            # Drawn per job, not per arrival: the same job takes the same path each run.
            kind = random.Random(f"{self.seed}/{tag}").random()
            key = KEY_A if number % 2 else KEY_B
            try:
                if kind < 0.42:
                    outcome = await self._native(http, tag, key, "chaos-sync", number)
                elif kind < 0.72:
                    outcome = await self._native(http, tag, key, "chaos-async", number)
                elif kind < 0.86:
                    outcome = await self._openai(http, tag, key, number)
                else:
                    outcome = await self._modelmux(http, tag, key, number)
            except Exception as exc:
                self.problems.append(f"{tag}: client error {exc!r}")
                continue
            self.outcomes.append(outcome)
            if number % 37 == 0:
                await self._intruder(http, number)
            if number % 101 == 0:
                await self._admin(http, key)

    def _headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def _native(self, http: aiohttp.ClientSession, tag: str, key: str, model: str,
                      number: int) -> Outcome:
        body: dict[str, Any] = {"model": model, "prompt": f"chaos #{tag} a lighthouse"}
        callback = number % 3 == 0
        if callback:
            body["callback_url"] = f"{self.hooks.url}/hook/{tag}"
        if model == "chaos-sync" and number % 5 == 0:
            body["image_base64"] = UPLOAD_B64
        headers = self._headers(key)
        if number % 4 == 0:
            headers["Idempotency-Key"] = f"create-{tag}"
        async with http.post(f"{self.url}/api/v1/images/generations", json=body,
                             headers=headers) as resp:
            data = await resp.json()
        if resp.status != 200:
            return Outcome("native", tag, http_status=resp.status)
        task_id = data["data"]["taskId"]
        if callback:
            await asyncio.wait_for(self.hooks.arrived[task_id].wait(), 150)
            # The receiver has the callback; the gateway records the attempt once the
            # answer is back (a database round trip later): until then it is pending.
            for _ in range(100):
                async with http.get(f"{self.url}/api/v1/webhooks/deliveries",
                                    params={"task_id": task_id},
                                    headers=self._headers(key)) as resp:
                    if resp.status != 200:
                        self.problems.append(f"{tag}: deliveries answered {resp.status}")
                        break
                    if (await resp.json())["data"]["status"] != "pending":
                        break
                await asyncio.sleep(0.05)
            if number % 9 == 0:
                async with http.post(f"{self.url}/api/v1/webhooks/redeliver",
                                     json={"task_id": task_id},
                                     headers=self._headers(key)) as resp:
                    if resp.status != 200:
                        self.problems.append(f"{tag}: redeliver answered {resp.status}")
        while True:
            async with http.get(f"{self.url}/api/v1/images/generations",
                                params={"task_id": task_id}, headers=self._headers(key)) as resp:
                task = (await resp.json())["data"]
            if task["state"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.25)
        if task["state"] == "completed":
            await self._fetch(http, task["resultUrls"][0], tag)
        return Outcome("native", tag, task_id, 200, task["state"], callback)

    async def _openai(self, http: aiohttp.ClientSession, tag: str, key: str,
                      number: int) -> Outcome:
        prompt = f"chaos #{tag} a red fox"
        b64 = number % 2 == 0
        body: dict[str, Any] = {"model": "chaos-sync", "prompt": prompt,
                                "response_format": "b64_json" if b64 else "url"}
        path = "/v1/images/generations"
        if number % 4 == 1:
            path = "/v1/images/edits"
            body["images"] = [{"image_url": f"data:image/png;base64,{UPLOAD_B64}"}]
        async with http.post(f"{self.url}{path}", json=body,
                             headers=self._headers(key)) as resp:
            data = await resp.json()
            job_id = resp.headers.get("x-muxproxy-job-id")
        state = "completed" if resp.status == 200 else "failed"
        if resp.status == 200:
            item = data["data"][0]
            if b64:
                assert base64.b64decode(item["b64_json"]).startswith(b"\x89PNG")
            else:
                await self._fetch(http, item["url"], tag)
        return Outcome("openai", tag, job_id, resp.status, state)

    async def _modelmux(self, http: aiohttp.ClientSession, tag: str, key: str,
                        number: int) -> Outcome:
        prompt = f"chaos #{tag} a tall ship"
        if number % 2:
            form = aiohttp.FormData()
            form.add_field("prompt", prompt)
            form.add_field("model", "chaos-sync")
            form.add_field("ref", UPLOAD, filename="ref.png", content_type="image/png")
            request = http.post(f"{self.url}/api/v1/generations", data=form,
                                headers=self._headers(key))
        else:
            request = http.post(f"{self.url}/api/v1/generations", headers=self._headers(key),
                                json={"prompt": prompt, "model": "chaos-sync"})
        async with request as resp:
            data = await resp.json()
        if resp.status != 200:
            return Outcome("modelmux", tag, http_status=resp.status)
        job_id = data["historyId"]
        while True:
            async with http.get(f"{self.url}/api/v1/generations/{job_id}",
                                headers=self._headers(key)) as resp:
                status = await resp.json()
            if status["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.25)
        if status["status"] == "completed":
            async with http.get(f"{self.url}/api/v1/generations/{job_id}/image",
                                headers=self._headers(key)) as resp:
                assert (await resp.read()).startswith(b"\x89PNG")
        return Outcome("modelmux", tag, job_id, 200, status["status"])

    async def _fetch(self, http: aiohttp.ClientSession, url: str, tag: str) -> None:
        async with http.get(url) as resp:
            if resp.status != 200 or not (await resp.read()).startswith(b"\x89PNG"):
                self.problems.append(f"{tag}: result {url} answered {resp.status}")

    async def _intruder(self, http: aiohttp.ClientSession, number: int) -> None:
        """A wrong key on some surface: refused, and never written down."""
        wrong = f"sk-wrong-{self.rng.getrandbits(64):016x}"
        self.wrong_keys.append(wrong)
        targets = [("POST", "/api/v1/images/generations"), ("GET", "/v1/models"),
                   ("POST", "/v1/images/generations"), ("POST", "/api/v1/generations"),
                   ("GET", "/api/v1/webhooks/secret"), ("GET", "/admin/keys")]
        method, path = targets[number % len(targets)]
        async with http.request(method, f"{self.url}{path}", json={"prompt": "x"},
                                headers=self._headers(wrong)) as resp:
            if resp.status != 401:
                self.problems.append(f"wrong key on {method} {path}: {resp.status}")

    async def _admin(self, http: aiohttp.ClientSession, key: str) -> None:
        name = "alpha" if key == KEY_A else "bravo"
        headers = self._headers(self.admin_token)
        # The admin API addresses keys by id; a name is looked up first.
        async with http.get(f"{self.url}/admin/keys", params={"name": name},
                            headers=headers) as resp:
            found = (await resp.json())["keys"] if resp.status == 200 else []
        if len(found) != 1:
            self.problems.append(f"admin lookup of {name}: {resp.status}, {len(found)} keys")
            return
        async with http.get(f"{self.url}/admin/keys/{found[0]['id']}/ledger",
                            headers=headers) as resp:
            if resp.status != 200:
                self.problems.append(f"admin ledger: {resp.status}")
