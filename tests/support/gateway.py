"""Running the real gateway in tests: uvicorn on a loopback port, real SQLite."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from aiohttp.abc import AbstractResolver

from muxproxy.app import create_app
from muxproxy.app_state import AppState
from muxproxy.clock import Clock
from muxproxy.server import HttpProtocol
from muxproxy.settings import Settings, parse_settings

KEY_A = "test-key-alpha-0001"
KEY_B = "test-key-bravo-0002"


def base_config(tmp_path: Path) -> dict[str, Any]:
    """A config dict (as TOML would give) for a gateway in ``tmp_path``."""
    return {
        "server": {"public_url": "http://127.0.0.1:1", "secret": "test-secret-0123456789",
                   "graceful_shutdown_seconds": 2},
        "database": {"url": f"sqlite:///{tmp_path}/muxproxy.db"},
        "storage": {"url": f"file://{tmp_path}/images"},
        "jobs": {"retry_base_seconds": 0.01, "retry_cap_seconds": 0.05,
                 "poll_initial_seconds": 0.01, "poll_cap_seconds": 0.05},
        "logging": {"level": "warning"},
        "keys": [{"name": "alpha", "key": KEY_A, "unlimited": True},
                 {"name": "bravo", "key": KEY_B, "unlimited": True}],
        "providers": {
            "demo": {"kind": "demo", "options": {}},
            "demo-queue": {"kind": "demo", "options": {"async": True}},
        },
        "models": {
            "demo-image": {"routes": [{"provider": "demo", "model": "demo-image"}]},
            "demo-image-async": {"routes": [{"provider": "demo-queue", "model": "demo-image"}]},
            "grok-image/grok-4.2-image": {"routes": [{"provider": "demo", "model": "grok"}]},
        },
    }


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def free_socket() -> socket.socket:
    # proto must say TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that
    # do, and with Nagle on every response after a connection's first one waited
    # ~40 ms for a delayed ACK (uvicorn writes headers and body separately).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class RunningGateway:
    url: str
    settings: Settings
    server: uvicorn.Server
    http: aiohttp.ClientSession
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> AppState:
        app: Any = self.server.config.loaded_app
        while not hasattr(app, "state"):
            app = app.app
        state: AppState = app.state.mux
        return state

    def headers(self, key: str = KEY_A) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def submit(self, body: Mapping[str, Any], key: str = KEY_A) -> str:
        async with self.http.post(f"{self.url}/api/v1/images/generations", json=body,
                                  headers=self.headers(key)) as resp:
            data = await resp.json()
            assert resp.status == 200, data
        task_id: str = data["data"]["taskId"]
        return task_id

    async def task(self, task_id: str, key: str = KEY_A) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/api/v1/images/generations",
                                 params={"task_id": task_id}, headers=self.headers(key)) as resp:
            data: dict[str, Any] = await resp.json()
            assert resp.status == 200, data
        result: dict[str, Any] = data["data"]
        return result

    async def wait_terminal(self, task_id: str, key: str = KEY_A,
                            timeout: float = 20.0) -> dict[str, Any]:
        """Poll like a client until the task ends; the scheduler's idle event would
        not tell us about jobs that are waiting for their next poll."""
        async with asyncio.timeout(timeout):
            while True:
                data = await self.task(task_id, key)
                if data["state"] in ("completed", "failed"):
                    return data
                await asyncio.sleep(0.01)


def settings_from(config: Mapping[str, Any], port: int) -> Settings:
    settings = parse_settings(config, {})
    server = replace(settings.server, public_url=f"http://127.0.0.1:{port}", port=port)
    return replace(settings, server=server)


@asynccontextmanager
async def run_gateway(config: Mapping[str, Any], *, clock: Clock | None = None,
                      sock: socket.socket | None = None,
                      resolver: AbstractResolver | None = None
                      ) -> AsyncIterator[RunningGateway]:
    """Start the gateway for real and stop it cleanly (lifespan included) after.
    ``resolver`` answers DNS for callback URLs."""
    sock = sock or free_socket()
    port = sock.getsockname()[1]
    settings = settings_from(config, port)
    app = create_app(settings, clock=clock, resolver=resolver)
    server = uvicorn.Server(uvicorn.Config(app, http=HttpProtocol, log_level="warning",
                                           lifespan="on", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("gateway exited during start")
                await asyncio.sleep(0.005)
        async with aiohttp.ClientSession() as http:
            yield RunningGateway(url=f"http://127.0.0.1:{port}", settings=settings,
                                 server=server, http=http)
    finally:
        server.should_exit = True
        await task
        sock.close()
