"""The gateway as a real OS process, for crash and restart tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.support.gateway import free_socket


def free_port() -> int:
    sock = free_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


class GatewayProcess:
    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "MUXPROXY_PORT": str(self.port),
               "MUXPROXY_PUBLIC_URL": self.url}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "muxproxy.cli", "serve", "--config", str(self.config),
            env=env, cwd=self.config.parent, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            while True:
                if self.proc.returncode is not None:
                    err = await self.proc.stderr.read() if self.proc.stderr else b""
                    raise RuntimeError(f"gateway exited: {err.decode(errors='replace')}")
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self.proc.wait()


@asynccontextmanager
async def gateway_process(config: Path, port: int | None = None
                          ) -> AsyncIterator[GatewayProcess]:
    process = GatewayProcess(config, port or free_port())
    await process.start()
    try:
        yield process
    finally:
        if process.proc is not None and process.proc.returncode is None:
            await process.kill()
