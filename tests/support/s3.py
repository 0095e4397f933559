"""An S3-compatible server for the tests: moto's standalone server (``moto[server]``,
in the test extra), started once per session as its own process on a free loopback
port, and a fresh bucket per test.

The rule for a missing server is the PostgreSQL tests' one: under ``CI=true`` an S3
test fails (CI must run it); elsewhere it is skipped with a message saying how to
get one. ``MUXPROXY_TEST_S3_URL`` points the tests at another server instead (a
MinIO, say), with ``MUXPROXY_TEST_S3_KEY`` and ``MUXPROXY_TEST_S3_SECRET``.

:class:`TcpRelay` stands between a gateway and the server, so a test can make the
bucket unreachable (refusing connections, cutting those open) and reachable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest
from aiobotocore.session import AioSession
from types_aiobotocore_s3 import S3Client

from tests.support.gateway import free_socket

ENV = "MUXPROXY_TEST_S3_URL"
KEY = os.environ.get("MUXPROXY_TEST_S3_KEY", "testing")
SECRET = os.environ.get("MUXPROXY_TEST_S3_SECRET", "testing-secret")
REGION = "us-east-1"


def unavailable(reason: str) -> NoReturn:
    message = (f"no S3-compatible server ({reason}). pip install -e '.[test]' brings "
               f"moto[server], which the tests start themselves; or set {ENV} to a server "
               "(with MUXPROXY_TEST_S3_KEY and MUXPROXY_TEST_S3_SECRET)")
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback only
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer: it is up
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of an S3-compatible server for this session."""
    if os.environ.get(ENV):
        url = os.environ[ENV].rstrip("/")
        if not _answers(url):
            unavailable(f"{url} does not answer")
        yield url
        return
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        unavailable(f"moto[server] is not installed: {exc}")
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _answers(f"{url}/moto-api/"):
            if proc.poll() is not None:
                assert proc.stderr is not None
                unavailable(f"moto's server exited: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                unavailable("moto's server did not answer within 30 s")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@dataclass(frozen=True)
class Bucket:
    endpoint: str
    name: str

    def url(self, prefix: str = "images") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def s3_settings(self, endpoint: str | None = None) -> dict[str, Any]:
        """``[storage.s3]`` for this server (or a relay in front of it)."""
        return {"endpoint_url": endpoint or self.endpoint, "region": REGION,
                "path_style": True, "access_key_id": KEY, "secret_access_key": SECRET,
                "max_attempts": 1, "connect_timeout_seconds": 2,
                "read_timeout_seconds": 5}

    def storage_config(self, prefix: str = "images", endpoint: str | None = None,
                       **extra: Any) -> dict[str, Any]:
        """A config's ``storage`` table for this bucket."""
        return {"url": self.url(prefix), "s3": self.s3_settings(endpoint), **extra}


def shared_session() -> AioSession:
    """One botocore session for the tests' own clients: loading botocore's models
    costs ~0.2 s a session, a client on a loaded one a few ms."""
    global _SESSION
    if _SESSION is None:
        _SESSION = AioSession()
    return _SESSION


_SESSION: AioSession | None = None


@contextlib.asynccontextmanager
async def client_for(endpoint: str) -> AsyncIterator[S3Client]:
    async with shared_session().create_client(
            "s3", region_name=REGION, endpoint_url=endpoint, aws_access_key_id=KEY,
            aws_secret_access_key=SECRET) as client:
        yield client


async def list_objects(bucket: Bucket) -> list[str]:
    """Every object's name in the bucket, as the server has them."""
    async with client_for(bucket.endpoint) as client:
        answer = await client.list_objects_v2(Bucket=bucket.name)
        return sorted(item["Key"] for item in answer.get("Contents", []))


async def new_bucket(endpoint: str) -> Bucket:
    """A new, empty bucket (moto keeps buckets in memory: leaving them costs nothing
    worth a cleanup)."""
    bucket = Bucket(endpoint, f"mux-{secrets.token_hex(6)}")
    async with client_for(endpoint) as client:
        await client.create_bucket(Bucket=bucket.name)
    return bucket


@pytest.fixture
async def s3_bucket(s3_server: str) -> Bucket:
    """A new, empty bucket for one test."""
    return await new_bucket(s3_server)


class TcpRelay:
    """Loopback TCP relay to ``target`` (host, port). ``cut()`` closes every open
    connection and refuses new ones until ``restore()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._sock = free_socket()
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, sock=self._sock)

    async def cut(self) -> None:
        """Unreachable: nothing listens on the port, and open connections drop."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        self._sock = free_socket_on(self.port)
        await self.start()

    async def aclose(self) -> None:
        if self._server is not None:
            await self.cut()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


def free_socket_on(port: int) -> Any:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


@contextlib.asynccontextmanager
async def relay_to(endpoint: str) -> AsyncIterator[TcpRelay]:
    host, _, port = endpoint.removeprefix("http://").partition(":")
    relay = TcpRelay(host, int(port))
    await relay.start()
    try:
        yield relay
    finally:
        await relay.aclose()
