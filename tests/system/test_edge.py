"""The HTTP edge's bounds, against the gateway as its own process on loopback: a
request head too large (431) or too slow (408), a body too slow (408), idle
kept-alive connections closed, and connections past ``server.max_connections``
refused cheaply while /healthz and /readyz still answer. Ordinary traffic
(keep-alive, pipelining, a large allowed body) is untouched."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from PIL import Image

from tests.support.audit import jobs
from tests.support.edge import (
    closed,
    get,
    half_sent,
    huge_header,
    raise_own_open_files,
    read_answer,
)
from tests.support.gateway import KEY_A
from tests.support.process import GatewayProcess, gateway_process
from tests.support.procstats import memory_kib
from tests.support.wait import eventually

MIB = 1024 * 1024
AUTH = f"Authorization: Bearer {KEY_A}\r\n"


def write_config(folder: Path, **server: float) -> Path:
    lines = "\n".join(f"{name} = {value}" for name, value in server.items())
    path = folder / "config.toml"
    path.write_text(f"""
[server]
port = "${{MUXPROXY_PORT}}"
public_url = "${{MUXPROXY_PUBLIC_URL}}"
secret = "edge-test-secret-0123456"
{lines}
[database]
url = "sqlite:///state/jobs.db"
[storage]
url = "file://state/images"
[logging]
level = "warning"
[[keys]]
name = "alpha"
key = "{KEY_A}"
unlimited = true
[providers.demo]
kind = "demo"
[models."demo-image"]
routes = [{{ provider = "demo", model = "demo-image" }}]
""")
    return path


@asynccontextmanager
async def gateway(tmp_path: Path, open_files: int | None = None, **server: float
                  ) -> AsyncIterator[GatewayProcess]:
    config = write_config(tmp_path, **server)
    async with gateway_process(config, log=tmp_path / "gateway.log",
                               open_files=open_files) as running:
        yield running


async def connect(gw: GatewayProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gw.port)


async def test_a_200_mb_header_is_refused_at_once_and_memory_stays_flat(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        rss_before, _ = memory_kib(gw.pid)
        answer, sent = await huge_header(gw.port, 200 * MIB, path="/v1/models")
        rss_after, peak = memory_kib(gw.pid)
    assert answer.status == 431
    assert answer.body == {"error": {"message": "request head exceeds the 65536 byte limit",
                                     "type": "invalid_request_error", "param": None,
                                     "code": "header_too_large"}}
    assert answer.seconds < 1.0
    assert sent < 50 * MIB  # the client saw the answer long before it was done
    assert rss_after - rss_before < 20 * 1024
    assert peak - rss_before < 20 * 1024


async def test_a_huge_request_line_is_refused_in_the_native_shape(tmp_path: Path) -> None:
    async with gateway(tmp_path, max_header_bytes=4096) as gw:
        reader, writer = await connect(gw)
        writer.write(b"GET /api/v1/images/generations?task_id=" + b"x" * 8000)
        answer = await read_answer(reader)
        await closed(reader)
        writer.close()
    assert answer.status == 431
    assert answer.body == {"code": 431, "msg": "request head exceeds the 4096 byte limit",
                           "data": None}


async def test_healthz_answers_beside_1100_half_sent_requests(tmp_path: Path) -> None:
    raise_own_open_files(1500)
    # The gateway starts with the soft limit a shell or systemd usually gives.
    async with gateway(tmp_path, open_files=1024) as gw, half_sent(gw.port, 1100) as held:
        assert len(held) == 1100
        for path in ("/healthz", "/readyz", "/healthz"):
            answer = await get(gw.port, path, timeout=10.0)
            assert answer.status == 200, path
            assert answer.seconds < 1.0, (path, answer.seconds)


async def test_a_head_not_sent_in_time_is_408_then_closed(tmp_path: Path) -> None:
    async with gateway(tmp_path, header_timeout_seconds=1) as gw:
        reader, writer = await connect(gw)
        silent_reader, silent_writer = await connect(gw)
        started = time.monotonic()
        writer.write(b"GET /api/v1/generations/abc HTTP/1.1\r\nHost: gateway\r\n")
        answer = await read_answer(reader)
        elapsed = time.monotonic() - started
        await closed(reader)
        # A connection that sent nothing is closed without an answer.
        assert (await read_answer(silent_reader)).status is None
        silent_elapsed = time.monotonic() - started
        writer.close()
        silent_writer.close()
    assert answer.status == 408
    assert answer.body == {"error": "request head not received within 1 s",
                           "code": "request_timeout"}
    assert 0.9 < elapsed < 3.0, elapsed
    assert silent_elapsed < 3.0, silent_elapsed


async def test_a_body_trickled_a_byte_a_second_is_dropped_at_the_deadline(tmp_path: Path
                                                                          ) -> None:
    async with gateway(tmp_path, body_timeout_seconds=2) as gw:
        reader, writer = await connect(gw)
        writer.write(f"POST /api/v1/images/generations HTTP/1.1\r\nHost: gateway\r\n{AUTH}"
                     f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode())
        started = time.monotonic()

        async def trickle() -> None:
            for byte in b'{"model": "demo-image", "prompt": "a slow fox' + b" " * 60:
                writer.write(bytes([byte]))
                await asyncio.sleep(1.0)  # the attack itself: one byte a second

        trickling = asyncio.create_task(trickle())
        answer = await read_answer(reader)
        elapsed = time.monotonic() - started
        await closed(reader)
        trickling.cancel()
        writer.close()
    assert answer.status == 408, answer
    assert answer.body == {"code": 408, "msg": "request body not received within 2 s",
                           "data": None}
    # The deadline, then at most one sweep (0.5 s here) and a margin for a busy machine.
    assert 1.9 < elapsed < 4.5, elapsed
    # The handler saw a disconnect: no job, no error logged.
    assert len(await jobs(tmp_path / "state" / "jobs.db")) == 0
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()


async def test_an_idle_kept_alive_connection_is_closed(tmp_path: Path) -> None:
    async with gateway(tmp_path, keepalive_timeout_seconds=1) as gw:
        reader, writer = await connect(gw)
        for _ in range(2):  # kept alive across requests
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert (await read_answer(reader)).status == 200
        idle_from = time.monotonic()
        await closed(reader)
        idle = time.monotonic() - idle_from
        writer.close()
    assert 0.9 < idle < 3.0, idle


async def test_past_max_connections_only_health_probes_are_served(tmp_path: Path) -> None:
    async with gateway(tmp_path, max_connections=20) as gw:
        async with half_sent(gw.port, 20):
            for path in ("/healthz", "/readyz"):
                assert (await get(gw.port, path)).status == 200
            reader, writer = await connect(gw)
            writer.write(f"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n{AUTH}\r\n".encode())
            refused = await read_answer(reader)
            await closed(reader)
            writer.close()
        # Once the held connections are gone, requests are served again.
        await eventually(lambda: _served(gw))
    assert refused.status == 503
    assert refused.body == {"error": {
        "message": "the gateway has too many open connections; retry shortly",
        "type": "server_error", "param": None, "code": "unavailable"}}
    assert refused.headers.get("retry-after") == "1"
    assert "x-request-id" not in refused.headers  # refused before the app saw it


async def _served(gw: GatewayProcess) -> bool:
    return (await get(gw.port, "/v1/models")).status == 401


async def test_keep_alive_pipelining_and_a_large_body_still_work(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        reader, writer = await connect(gw)
        # Three pipelined requests in one write, one with a 40 KiB header (the
        # default limit is 64 KiB).
        big = "X-Padding: " + "p" * 40 * 1024 + "\r\n"
        writer.write((f"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
                      f"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n{AUTH}{big}\r\n"
                      f"GET /readyz HTTP/1.1\r\nHost: gateway\r\n\r\n").encode())
        answers = [await read_answer(reader) for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 200]
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert (await read_answer(reader)).status == 200  # still the same connection
        writer.close()

        form = aiohttp.FormData()
        form.add_field("image", io.BytesIO(noise_png(1400)), filename="big.png",
                       content_type="image/png")
        form.add_field("prompt", "a fox")
        form.add_field("model", "demo-image")
        async with aiohttp.ClientSession() as http, http.post(
                f"{gw.url}/v1/images/edits", data=form,
                headers={"Authorization": f"Bearer {KEY_A}"}) as resp:
            assert resp.status == 200, await resp.text()
            assert len((await resp.json())["data"]) == 1


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 bytes a pixel (5.6 MiB at 1400)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="PNG")
    assert out.tell() > 5 * MIB
    return out.getvalue()


async def test_a_pipelined_head_too_large_ends_the_connection_after_the_answers_before_it(
        tmp_path: Path) -> None:
    async with gateway(tmp_path, max_header_bytes=4096) as gw:
        reader, writer = await connect(gw)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
                     b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nX-Filler: " + b"f" * 60000)
        first = await read_answer(reader)
        second = await read_answer(reader)
        await closed(reader)
        writer.close()
    assert first.status == 200 and first.body == {"status": "ok"}
    # Refused with 431 if the first answer was out by then; otherwise the
    # connection closes once it is, never mixing the two.
    assert second.status in (431, None)
    if second.status == 431:
        assert second.body["error"]["code"] == "header_too_large"  # type: ignore[index]
