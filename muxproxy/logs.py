"""Structured JSON logs (structlog), with secrets and image data kept out.

Context (``request_id``, ``job_id``) is bound through contextvars, so every line
logged while serving a request or running a job carries it.

Lines logged on the event loop are written together, once per pass of the loop
(:class:`LineWriter`): a busy gateway logs several lines per request, and one
write call for all of them costs less than one each. A crash that kills the
process outright can lose the lines of the pass it was in.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import datetime
import functools
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

_SECRET_NAMES = re.compile(r"(authorization|api[-_]?key|secret|token|password|x-key)", re.I)
_BASE64ISH = re.compile(r"^[A-Za-z0-9+/=_-]{200,}$")
_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")


@functools.lru_cache(maxsize=1024)
def _secret_name(name: str) -> bool:
    return _SECRET_NAMES.search(name) is not None


def scrub(value: Any) -> Any:
    """Replace base64 blobs and data URIs in a logged value with a short placeholder."""
    if isinstance(value, str):
        if len(value) >= 200 and _BASE64ISH.match(value):  # the pattern needs 200
            return f"<{len(value)} chars elided>"
        if "base64," in value:
            return _DATA_URI.sub("<data uri elided>", value)
        return value
    if isinstance(value, dict):
        return {k: "<redacted>" if _secret_name(str(k)) else scrub(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        kind = type(value)
        if key != "event" and _secret_name(key):
            event[key] = "<redacted>"
        elif kind is str:  # scrub()'s own test, without the call for a short string
            if len(value) >= 200 or "base64," in value:
                event[key] = scrub(value)
        elif kind not in _PLAIN:
            event[key] = scrub(value)
    return event


# Values scrub() hands back as they are (a subclass still goes through it).
_PLAIN = frozenset({int, float, bool, type(None)})
_LEVELS = {"warn": "warning", "exception": "error"}  # as structlog's add_log_level


class _Stamp:
    """The time as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it, the
    date and time of day formatted once a second rather than on every line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        second, micros = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._prefix = datetime.datetime.fromtimestamp(
                second, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        # isoformat() leaves out a zero fraction.
        return f"{self._prefix}.{micros:06d}Z" if micros else f"{self._prefix}Z"


def _prepare(stamp: _Stamp) -> Any:
    """structlog's merge_contextvars, add_log_level, TimeStamper and format_exc_info,
    then the redaction, as one processor: a line runs them all, and one call per line
    costs less than five."""
    format_exc_info = structlog.processors.format_exc_info
    prefix, cut = structlog.contextvars.STRUCTLOG_KEY_PREFIX, \
        structlog.contextvars.STRUCTLOG_KEY_PREFIX_LEN

    def prepare(logger: Any, method_name: str,
                event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        ctx = contextvars.copy_context()
        for var in ctx:
            if var.name.startswith(prefix) and ctx[var] is not Ellipsis:
                event.setdefault(var.name[cut:], ctx[var])
        event["level"] = _LEVELS.get(method_name, method_name)
        event["timestamp"] = stamp.now()
        if "exc_info" in event:
            event = format_exc_info(logger, method_name, event)
        return _redact(logger, method_name, event)

    return prepare


def _render(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    return orjson.dumps(event, default=str).decode()


class LineWriter:
    """structlog's logger: one line per call, to the standard output of the moment
    (so a test capturing it sees the lines), gathered per pass of the running loop."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a thread, or no loop: at once
            self._write(message + "\n")
            return
        if not self._pending:
            loop.call_soon(self.flush)
        self._pending.append(message)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def flush(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            self._write("\n".join(lines) + "\n")

    @staticmethod
    def _write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()


def configure_logging(level: str = "info", fmt: str = "json") -> LineWriter:
    """Configure structlog; the writer returned must be flushed before the loop ends."""
    global _generation
    writer = LineWriter()
    renderer: Any = _render if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[_prepare(_Stamp()), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    # Only now: a logger used in between must not keep the old configuration.
    _generation += 1
    return writer


# Counts configure_logging() calls: a logger made under an older configuration
# makes itself again.
_generation = 0


class _Logger:
    """A module's logger. structlog's own lazy proxy assembles a new bound logger on
    every call (its cache would outlive a later configure_logging(), as tests do);
    this one keeps it until the configuration changes."""

    __slots__ = ("_bound", "_generation", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._generation = -1
        self._bound: Any = None

    def __getattr__(self, method: str) -> Any:
        if self._generation != _generation:
            self._bound = structlog.get_logger(self._name).bind()
            self._generation = _generation
        return getattr(self._bound, method)


def get_logger(name: str) -> Any:
    return _Logger(name)
