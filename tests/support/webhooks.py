"""Webhook test tools: a receiver on loopback that records callbacks and answers
from a script, a DNS stand-in, and helpers that drive the relay on a ManualClock."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from muxproxy.clock import Clock, ManualClock, SystemClock
from muxproxy.webhooks.outbox import Delivery
from tests.support.gateway import RunningGateway

LOOPBACK = {"webhooks": {"allow_networks": ["127.0.0.0/8", "::1/128"]}}


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    # Never answer (until the receiver closes).
    hang: bool = False


@dataclass(frozen=True)
class Hit:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    """A webhook endpoint on a loopback port. ``script`` answers hits in order, then
    ``default``. ``bind()`` without ``listen()`` is a receiver that is down: the
    port is held but refuses connections."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.script: deque[Answer] = deque()
        self.default = Answer()
        self.hits: list[Hit] = []
        self._release = asyncio.Event()
        self._sock: socket.socket | None = None
        self._runner: web.AppRunner | None = None

    def bind(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self._port: int = sock.getsockname()[1]

    async def listen(self) -> None:
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
        elif self._sock is not None:
            self._sock.close()

    async def __aenter__(self) -> Receiver:
        await self.listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        answer = self.script.popleft() if self.script else self.default
        self.hits.append(Hit(at=self.clock.now(), path=request.path_qs,
                             headers=dict(request.headers), body=await request.read()))
        if answer.hang:
            await self._release.wait()
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def wait_hits(self, count: int, timeout: float = 5.0) -> list[Hit]:
        await until(lambda: len(self.hits) >= count, timeout)
        return self.hits


class StaticResolver(AbstractResolver):
    """DNS for tests: each name maps to a list of answers, one per lookup (the last
    repeats), so a test can change what a name resolves to between lookups."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.lookups.append(host)
        answers = self.names.get(host)
        if not answers:
            raise OSError(f"unknown test host {host}")
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [{"hostname": host, "host": address, "port": port, "family": family,
                 "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def delivery(gateway: RunningGateway, task_id: str) -> Delivery:
    found = await gateway.state.store.get_delivery(task_id)
    assert found is not None, "no outbox row for the task"
    return found


async def wait_attempts(gateway: RunningGateway, task_id: str, count: int,
                        timeout: float = 5.0) -> Delivery:
    """Wait until the relay has recorded ``count`` attempts for the task."""
    deadline = time.monotonic() + timeout
    while True:
        found = await gateway.state.store.get_delivery(task_id)
        if found is not None and found.attempts >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} attempts not recorded in time: {found}")
        await asyncio.sleep(0.005)


async def next_attempt(gateway: RunningGateway, clock: ManualClock, task_id: str) -> Delivery:
    """Move the clock to the delivery's next attempt and wait until it is recorded."""
    before = await delivery(gateway, task_id)
    assert before.next_attempt_at is not None, before
    clock.set(before.next_attempt_at / 1000 + 0.0005)
    return await wait_attempts(gateway, task_id, before.attempts + 1)


class SilentReceiver:
    """A loopback port that accepts connections and never answers: each attempt
    to it holds a relay slot until the attempt times out."""

    def __init__(self) -> None:
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SilentReceiver:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.hang_up()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def hang_up(self) -> None:
        """Close every connection held, so the attempts end at once."""
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)

    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"
