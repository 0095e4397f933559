"""The log processor does in one call what structlog's stock processors did, and
keeps secrets and base64 out of every line."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
import structlog

from muxproxy.logs import _prepare, _Stamp


def test_the_stamp_is_structlogs_iso_utc_form() -> None:
    stamp = _Stamp()
    ours = stamp.now()
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", ours)
    parsed = [datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
              for t in (ours, theirs["timestamp"])]
    assert abs((parsed[1] - parsed[0]).total_seconds()) < 1


def test_a_whole_second_has_no_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("muxproxy.logs.time.time_ns", lambda: 1_764_620_272_000_000_000)
    assert _Stamp().now() == "2025-12-01T20:17:52Z"
    monkeypatch.setattr("muxproxy.logs.time.time_ns", lambda: 1_764_620_272_000_042_999)
    assert _Stamp().now() == "2025-12-01T20:17:52.000042Z"


def test_context_level_and_redaction() -> None:
    prepare = _prepare(_Stamp())
    structlog.contextvars.bind_contextvars(request_id="r-1")
    try:
        event: Any = prepare(None, "warn", {
            "event": "x", "api_key": "sk-1", "status": 200, "ms": 1.5, "ok": True,
            "blob": "A" * 300, "uri": "see data:image/png;base64,AAAA", "short": "fine",
            "nested": {"Authorization": "Bearer t", "n": 1}, "none": None})
    finally:
        structlog.contextvars.clear_contextvars()
    assert event["request_id"] == "r-1" and event["level"] == "warning"
    assert event["api_key"] == "<redacted>" and event["nested"] == {
        "Authorization": "<redacted>", "n": 1}
    assert event["blob"] == "<300 chars elided>"
    assert event["uri"] == "see <data uri elided>"
    assert (event["status"], event["ms"], event["ok"], event["short"], event["none"]) == (
        200, 1.5, True, "fine", None)


def test_exc_info_is_formatted() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        event: Any = _prepare(_Stamp())(None, "exception", {"event": "x", "exc_info": True})
    assert event["level"] == "error" and "ValueError: boom" in event["exception"]
