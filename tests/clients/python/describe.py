"""What the Python client cases share: running them, and what they print (each
image's format and size, read from its bytes, fetched when the client handed back a
URL)."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set")
    return value


def image(data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as opened:
        return {"format": (opened.format or "unknown").lower(), "width": opened.width,
                "height": opened.height}


def item(url: str | None, b64_json: str | None) -> dict[str, Any]:
    if b64_json:
        return {"kind": "b64_json", **image(base64.b64decode(b64_json))}
    if url:
        # The gateway's own signed link, on the loopback address the test gave.
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
            return {"kind": "url", **image(response.read())}
    return {"kind": "none"}


def main(cases: Mapping[str, Callable[[], Any]]) -> None:
    """Run every case (or those named on the command line, one per argument); print
    one JSON line each: ``{"case", "ok", "result"}`` or ``{"case", "ok", "error"}``.
    A client's exception is the case's failure, not the run's."""
    names = sys.argv[1:] or list(cases)
    for name in names:
        if name not in cases:
            raise SystemExit(f"unknown case {name!r}; cases: {', '.join(cases)}")
    for name in names:
        try:
            line = {"case": name, "ok": True, "result": cases[name]()}
        except Exception as exc:
            line = {"case": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(line), flush=True)
