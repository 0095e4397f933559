"""Driving the web console over plain HTTP (the browser tests use Chromium): a
signed-in session with its cookie and the CSRF token its pages carry."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class ConsoleClient:
    url: str
    http: aiohttp.ClientSession
    csrf: str

    async def form(self, path: str, fields: dict[str, str] | None = None, *,
                   csrf: str | None = "own") -> tuple[int, str, str]:
        """POST a form (with the session's CSRF token unless told otherwise): the
        status, the Location header and the body."""
        data = dict(fields or {})
        if csrf is not None:
            data["csrf"] = self.csrf if csrf == "own" else csrf
        async with self.http.post(self.url + path, data=data, allow_redirects=False) as resp:
            return resp.status, resp.headers.get("Location", ""), await resp.text()

    async def get(self, path: str) -> tuple[int, str, str]:
        async with self.http.get(self.url + path, allow_redirects=False) as resp:
            return resp.status, resp.headers.get("Location", ""), await resp.text()


@asynccontextmanager
async def console_client(url: str, token: str | None) -> AsyncIterator[ConsoleClient]:
    """A cookie jar of its own, signed in with ``token`` (or, with None, holding only
    the sign-in form's anonymous session)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{url}/console/signin") as resp:
            assert resp.status == 200
            found = CSRF.search(await resp.text())
            assert found is not None
        client = ConsoleClient(url, http, found.group(1))
        if token is not None:
            status, location, body = await client.form("/console/signin", {"token": token})
            assert (status, location) == (303, "/console/overview"), body
            _, _, page = await client.get("/console/overview")
            found = CSRF.search(page)
            assert found is not None
            client.csrf = found.group(1)
        yield client
