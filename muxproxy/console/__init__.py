"""The web console (docs/console.md): server-rendered pages over the gateway's
service layer and :class:`~muxproxy.keyadmin.KeyAdmin`, for the operator (signed in
with the admin token) and for each team (signed in with its API key).

Its routes are a surface of their own (:mod:`muxproxy.surfaces.console`), mounted
at ``console.path``; :class:`Console` (templates and sessions) is built by
``create_app`` and kept on ``app.state.console``.
"""

from __future__ import annotations

import datetime

import jinja2

from muxproxy.console.session import Sessions
from muxproxy.console.throttle import FailedSignIns
from muxproxy.settings import Settings


class Console:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = settings.console.path
        self.sessions = Sessions(settings)
        self.failed_signins = FailedSignIns()
        # Autoescaped everywhere: job prompts, key names and errors are user text.
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("muxproxy.console", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True)
        self.templates.filters["when"] = when
        self.templates.filters["ms"] = duration


def when(ms: int) -> str:
    """A time in milliseconds as UTC, to the second."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def duration(ms: int) -> str:
    return f"{ms} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"
