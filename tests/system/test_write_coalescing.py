"""Writes made in one pass of the event loop leave together: a response's head
and body (uvicorn writes them apart) and the log lines of many requests."""

from __future__ import annotations

import asyncio
import io
import sys
from typing import Any

import orjson
import pytest
import structlog

from muxproxy.logs import LineWriter, configure_logging, get_logger
from muxproxy.server import _CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return f"info:{name}"


async def test_a_response_written_in_one_pass_leaves_in_one_write() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"ok")
    assert inner.writes == []
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    assert transport.get_extra_info("peername") == "info:peername"


async def test_close_sends_what_is_pending_first() -> None:
    inner = RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"last words")
    transport.close()
    assert inner.writes == [b"last words"] and inner.closed
    await asyncio.sleep(0)  # the flush scheduled by write() finds nothing left
    assert inner.writes == [b"last words"]


async def test_log_lines_of_one_pass_are_written_once(monkeypatch: pytest.MonkeyPatch) -> None:
    out = CountingStream()
    monkeypatch.setattr(sys, "stdout", out)
    writer = LineWriter()
    writer.msg('{"event":"one"}')
    writer.msg('{"event":"two"}')
    assert out.getvalue() == ""
    await asyncio.sleep(0)
    assert out.getvalue() == '{"event":"one"}\n{"event":"two"}\n'
    assert out.writes == 1


def test_log_lines_outside_the_loop_are_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    out = CountingStream()
    monkeypatch.setattr(sys, "stdout", out)
    LineWriter().msg('{"event":"cli"}')
    assert out.getvalue() == '{"event":"cli"}\n'


def test_a_logger_follows_a_later_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loggers keep their assembled structlog logger between calls; configuring
    # logging again (a new level, a new writer) must still reach them.
    out = CountingStream()
    monkeypatch.setattr(sys, "stdout", out)
    log = get_logger("muxproxy.test")
    try:
        configure_logging("info")
        log.info("first", n=1)
        configure_logging("warning")
        log.info("filtered out")
        log.warning("second", n=2)
        lines = out.getvalue().splitlines()
        assert [orjson.loads(line)["event"] for line in lines] == ["first", "second"]
        configure_logging("info", fmt="console")
        log.info("third")
        last = out.getvalue().splitlines()[-1]
        assert "third" in last and not last.startswith("{")
    finally:
        configure_logging("warning")  # as the tests' gateways configure it


def test_a_logger_used_while_logging_is_reconfigured_takes_the_new_configuration(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread may log while configure_logging() runs; the logger it builds
    # then must not be kept as if it were made under the new configuration.
    out = CountingStream()
    monkeypatch.setattr(sys, "stdout", out)
    log = get_logger("muxproxy.test")
    configure = structlog.configure

    def configure_while_logging(**settings: Any) -> None:
        log.info("meanwhile")  # still under the old configuration (warning)
        configure(**settings)

    monkeypatch.setattr(structlog, "configure", configure_while_logging)
    try:
        configure_logging("warning")
        configure_logging("info")
        log.info("after")
        assert [orjson.loads(line)["event"] for line in out.getvalue().splitlines()] == [
            "after"]
    finally:
        monkeypatch.undo()
        configure_logging("warning")


class CountingStream(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)
