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
import functools
import logging
import re
import sys
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
    for key in list(event):
        if key != "event" and _secret_name(key):
            event[key] = "<redacted>"
        else:
            event[key] = scrub(event[key])
    return event


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


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
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_dumps) if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
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
