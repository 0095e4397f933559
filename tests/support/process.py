"""The gateway as a real OS process, for crash and restart tests."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import aiohttp

from tests.support.gateway import free_socket


def free_port() -> int:
    sock = free_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


class GatewayProcess:
    """``log``: a file that gets everything the process writes (stdout and stderr,
    appended across restarts); without it output is discarded but for the stderr
    of a failed start. ``open_files``: the soft RLIMIT_NOFILE the process starts
    with (a shell's or systemd's usual 1024, say); None inherits this one's.
    ``args``: more ``serve`` options (``--workers 2``)."""

    def __init__(self, config: Path, port: int, log: Path | None = None,
                 open_files: int | None = None, args: Sequence[str] = ()) -> None:
        self.config = config
        self.args = tuple(args)
        self.port = port
        self.log = log
        self.open_files = open_files
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        env = {**os.environ, "MUXPROXY_PORT": str(self.port),
               "MUXPROXY_PUBLIC_URL": self.url}
        if self.log is not None:
            self._log_file = self.log.open("ab")
            out: int | IO[bytes] = self._log_file
            err: int | IO[bytes] = self._log_file
        else:
            out, err = asyncio.subprocess.DEVNULL, asyncio.subprocess.PIPE
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "muxproxy.cli", "serve", "--config", str(self.config),
            *self.args, env=env, cwd=self.config.parent, stdout=out, stderr=err,
            preexec_fn=None if self.open_files is None else self._limit_open_files)
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"gateway exited: {await self._stderr()}")
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(self.open_files, hard), hard))

    async def _stderr(self) -> str:
        if self.proc is not None and self.proc.stderr is not None:
            return (await self.proc.stderr.read()).decode(errors="replace")
        if self.log is not None:
            return self.log.read_text(errors="replace")[-4000:]
        return ""

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self._close_log()

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait()

    async def wait(self) -> int:
        """The exit code, once the process has ended."""
        assert self.proc is not None
        code = await self.proc.wait()
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@asynccontextmanager
async def gateway_process(config: Path, port: int | None = None, *, log: Path | None = None,
                          open_files: int | None = None, args: Sequence[str] = ()
                          ) -> AsyncIterator[GatewayProcess]:
    process = GatewayProcess(config, port or free_port(), log, open_files, args)
    try:
        await process.start()
        yield process
    finally:
        if process.proc is not None and process.proc.returncode is None:
            await process.kill()
        process._close_log()
