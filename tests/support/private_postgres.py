"""A PostgreSQL server of the test's own, which the test may stop and start: the
shared server (``MUXPROXY_TEST_POSTGRES_URL``) serves every other test at the same
time and is never stopped.

``initdb`` and ``pg_ctl`` come from the PostgreSQL server package
(``/usr/lib/postgresql/<version>/bin`` on Debian, or ``$PATH``). Run as root, the
server runs as the ``postgres`` OS user (PostgreSQL refuses to run as root). A
missing server package follows :func:`tests.support.postgres.unavailable`: a
failure under ``CI=true``, a skip elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.support.postgres import unavailable
from tests.support.process import free_port


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PrivatePostgres:
    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir = bindir
        self.root = root
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._as_postgres = os.geteuid() == 0

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stderr}{done.stdout}\n{tail}")

    def init(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-A", "trust", "-U", "postgres", "--no-sync", "-D",
                  str(self.root / "data"))

    async def start(self) -> None:
        await asyncio.to_thread(
            self._run, "pg_ctl", "-D", str(self.root / "data"), "-l",
            str(self.root / "server.log"), "-w", "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start")

    async def stop(self) -> None:
        """Stop at once, as a crash would: connections are cut, nothing is waited for."""
        await asyncio.to_thread(self._run, "pg_ctl", "-D", str(self.root / "data"),
                                "-m", "immediate", "-w", "stop")


@asynccontextmanager
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    bindir = _bindir()
    if bindir is None:
        unavailable("initdb not found: install the PostgreSQL server package "
                    "(postgresql-15) for the outage tests")
    root = Path(tempfile.mkdtemp(prefix="muxproxy-pg-"))
    server = PrivatePostgres(bindir, root, free_port())
    try:
        try:
            await asyncio.to_thread(server.init)
            await server.start()
        except (RuntimeError, OSError) as exc:
            unavailable(f"a private server could not start: {exc}")
        yield server
    finally:
        with contextlib.suppress(RuntimeError):  # already stopped
            await server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def stoppable_postgres() -> AsyncIterator[PrivatePostgres]:
    async with private_postgres() as server:
        yield server
