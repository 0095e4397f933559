"""What the adapters share: the error-body reader, the size fitter, the Retry-After
parser and the table of default base URLs and auth headers."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from muxproxy.clock import ManualClock
from muxproxy.pipeline.backoff import parse_retry_after
from muxproxy.providers import KINDS, provider_class
from muxproxy.providers.base import UPSTREAMS, Provider
from muxproxy.providers.sizes import (
    PixelBox,
    fit,
    nearest_ratio,
    nearest_resolution,
    nearest_size,
    ratio_size,
    reduced_ratio,
)
from muxproxy.providers.wire import MAX_ERROR_BODY, Answer, message_at, read_answer, read_error
from muxproxy.settings import ProviderSettings, SettingsError

NOW = 1_700_000_000.0

# -- Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), (" 20 ", 20.0), ("1.5", 1.5), ("0", 0.0), ("-3", 0.0),
    ("inf", None), ("nan", None), ("soon", None), ("", None), (None, None),
    (format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True), 90.0),
    (format_datetime(datetime.fromtimestamp(NOW - 90, UTC), usegmt=True), 0.0),
    ("Tue, 14 Nov 2023 22:14:20 -0000", None),  # no zone: not a time we can trust
])
def test_retry_after(value: str | None, seconds: float | None) -> None:
    parsed = parse_retry_after(value, NOW)
    assert parsed == (pytest.approx(seconds) if seconds is not None else None)


async def test_a_provider_reads_retry_after_on_its_clock(
        aiohttp_server: AiohttpServer, http: aiohttp.ClientSession) -> None:
    clock = ManualClock(start=NOW)
    when = format_datetime(datetime.fromtimestamp(NOW + 40, UTC), usegmt=True)

    async def busy(request: web.Request) -> web.Response:
        return web.json_response({"detail": "slow down"}, status=429,
                                 headers={"Retry-After": when})

    app = web.Application()
    app.router.add_post("/fal-ai/flux/dev", busy)
    server = await aiohttp_server(app)
    fal = provider_class("fal")(ProviderSettings(
        name="fal", kind="fal", base_url=str(server.make_url("")), api_key="k"), http, clock)
    async with fal.call("POST", f"{fal.base_url}/fal-ai/flux/dev") as response:
        error = await fal.upstream_error(response)
    assert (error.message, error.transient, error.retry_after) == ("fal: slow down", True, 40.0)


# -- error bodies --------------------------------------------------------------------


@pytest.mark.parametrize(("body", "paths", "message"), [
    ({"error": {"message": "bad key", "code": "invalid_api_key"}},
     ("error.message", "error"), "bad key"),
    ({"code": "x", "error": "Incorrect API key"}, ("error.message", "error"),
     "Incorrect API key"),
    ({"detail": "", "title": "Request was throttled."}, ("detail", "title"),
     "Request was throttled."),
    ({"detail": [{"loc": ["body", "image_urls", 0], "msg": "Could not download"},
                 {"loc": ["body"], "type": "missing"}, "odd"]}, ("detail",),
     "image_urls.0: Could not download; missing"),
    ({"msg": 42}, ("msg",), None),
    (["not", "an", "object"], ("error.message",), None),
    (None, ("detail",), None),
])
def test_message_at(body: Any, paths: tuple[str, ...], message: str | None) -> None:
    assert message_at(body, paths) == message


@pytest.fixture
async def answers(aiohttp_server: AiohttpServer) -> str:
    async def json_body(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "nope"}}, status=400)

    async def html(request: web.Request) -> web.Response:
        page = "<html>\n  <h1>502 Bad Gateway</h1>" + " filler" * 100 + "\n</html>"
        return web.Response(text=page, status=502, content_type="text/html")

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"{" + b" " * MAX_ERROR_BODY + b"}", status=500)

    app = web.Application()
    for name, handler in (("json", json_body), ("html", html), ("huge", huge)):
        app.router.add_get(f"/{name}", handler)
    return str((await aiohttp_server(app)).make_url(""))


async def test_read_answer_gives_json_text_or_nothing(
        answers: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{answers}/json") as resp:
        assert await read_answer(resp) == Answer(json={"error": {"message": "nope"}})
    async with http.get(f"{answers}/html") as resp:
        page = await read_answer(resp)
    assert page.json is None and page.text.startswith("<html>")
    assert page.snippet.startswith("<html> <h1>502 Bad Gateway</h1> filler")
    assert len(page.snippet) == 300 and page.snippet.endswith("…")
    async with http.get(f"{answers}/huge") as resp:
        assert await read_error(resp) == Answer()


# -- sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "choices", "ratio"), [
    ((1024, 1024), ("16:9", "1:1", "9:16"), "1:1"),
    ((1792, 1024), ("1:1", "16:9", "2:1"), "16:9"),
    ((768, 1664), ("9:16", "9:19.5", "9:20"), "9:19.5"),
    ((4096, 512), ("4:1", "8:1"), "8:1"),          # beyond what a request may ask for
    ((1000, 500), ("3:2", "2:1", "5:2"), "2:1"),
])
def test_nearest_ratio(size: tuple[int, int], choices: tuple[str, ...], ratio: str) -> None:
    assert nearest_ratio(*size, choices) == ratio


def test_too_wide_and_too_tall_by_the_same_factor_tie() -> None:
    # 2:1 is as far from 1:1 as 1:2 is: the first listed wins either way round.
    assert nearest_ratio(1, 1, ("2:1", "1:2")) == "2:1"
    assert nearest_ratio(1, 1, ("1:2", "2:1")) == "1:2"


def test_nearest_size_keeps_the_orientation() -> None:
    sizes = ((1024, 1024), (1536, 1024), (1024, 1536))
    assert nearest_size(sizes, 16 / 9) == (1536, 1024)
    assert nearest_size(sizes, 1.02) == (1024, 1024)
    assert nearest_size(((1024, 1024),), 9 / 16) is None


@pytest.mark.parametrize(("size", "tier"), [
    ((1024, 1024), "1k"), ((1536, 1024), "1k"), ((1500, 1500), "2k"), ((2048, 2048), "2k"),
    ((3000, 3000), "4k"),
])
def test_nearest_resolution(size: tuple[int, int], tier: str) -> None:
    assert nearest_resolution(*size, ("1k", "2k", "4k")) == tier


def test_fit_scales_into_the_box_and_keeps_the_ratio() -> None:
    box = PixelBox(multiple=32, min_side=256, max_side=1440, max_area=1440 * 1440)
    assert fit(*ratio_size(16 / 9, "2k"), box) == (1440, 800)
    assert fit(200, 200, box) == (256, 256)
    assert fit(1000, 600, PixelBox()) == (992, 608)     # to the nearest multiple of 16
    floor = PixelBox(multiple=16, min_side=16, max_side=3840, max_area=3840 * 2160,
                     round_down=True)
    assert fit(1000, 600, floor) == (992, 592)          # never above what was asked
    assert fit(*ratio_size(1.0, "4k"), floor) == (2880, 2880)
    assert reduced_ratio(1360, 768) == "85:48"


# -- base URLs and auth headers ------------------------------------------------------


@pytest.mark.parametrize(("kind", "headers"), [
    ("openai", {"Authorization": "Bearer sk-1"}),
    ("openai-compatible", {"Authorization": "Bearer sk-1"}),
    ("xai", {"Authorization": "Bearer sk-1"}),
    ("gemini", {"x-goog-api-key": "sk-1"}),
    ("fal", {"Authorization": "Key sk-1"}),
    ("replicate", {"Authorization": "Bearer sk-1"}),
    ("bfl", {"x-key": "sk-1"}),
    ("task", {"Authorization": "Bearer sk-1"}),
])
def test_each_kind_takes_its_key_in_its_own_header(kind: str, headers: dict[str, str],
                                                   http: aiohttp.ClientSession) -> None:
    assert set(UPSTREAMS) == set(KINDS) - {"demo"}
    provider = build(kind, http, base_url="http://127.0.0.1:9/v1", api_key="sk-1")
    assert provider.auth_headers() == headers
    assert build(kind, http, base_url="http://127.0.0.1:9", api_key="").auth_headers() == {}


@pytest.mark.parametrize(("kind", "base_url"), [
    ("openai", "https://api.openai.com/v1"), ("xai", "https://api.x.ai/v1"),
    ("gemini", "https://generativelanguage.googleapis.com/v1beta"),
    ("fal", "https://queue.fal.run"), ("replicate", "https://api.replicate.com/v1"),
    ("bfl", "https://api.bfl.ai"),
])
def test_default_base_urls(kind: str, base_url: str, http: aiohttp.ClientSession) -> None:
    assert build(kind, http).base_url == base_url
    assert build(kind, http, base_url="http://127.0.0.1:9/v1/").base_url == \
        "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("kind", ["openai-compatible", "task"])
def test_kinds_without_a_default_need_a_base_url(kind: str,
                                                 http: aiohttp.ClientSession) -> None:
    with pytest.raises(SettingsError, match=rf"providers.up.base_url: required for kind "
                                            rf"'{kind}'"):
        build(kind, http)


def build(kind: str, http: aiohttp.ClientSession, **fields: Any) -> Provider:
    return provider_class(kind)(ProviderSettings(name="up", kind=kind, **fields), http,
                                ManualClock())
