"""One download helper behind ``/files`` and the ModelMux ``/image``: the same bytes,
headers, HEAD and Range whether the backend has a file to send (FileResponse) or is
streamed from ``open_read`` (as an object store will be), and refusals in the
calling surface's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from muxproxy.downloads import serve_blob
from muxproxy.http import surface
from muxproxy.storage.base import check_key
from muxproxy.storage.local import LocalStorage
from muxproxy.surfaces import native
from tests.support.gateway import RunningGateway

PATHS = ["file", "stream"]


@pytest.fixture(params=PATHS)
def served(request: pytest.FixtureRequest, gateway: RunningGateway,
           monkeypatch: pytest.MonkeyPatch) -> RunningGateway:
    """The gateway, its images sent as files or, without a local path, streamed."""
    if request.param == "stream":
        monkeypatch.setattr(gateway.state.storage, "local_path", _no_path)
    return gateway


def _no_path(key: str) -> str | None:
    return None


async def links(gateway: RunningGateway) -> tuple[str, str]:
    """A finished job's signed link and its ModelMux image address."""
    task_id = await gateway.submit({"model": "demo-image", "prompt": "a lighthouse"})
    done = await gateway.wait_terminal(task_id)
    return done["resultUrls"][0], f"{gateway.url}/api/v1/generations/{task_id}/image"


async def fetch(gateway: RunningGateway, url: str, method: str = "GET", **headers: str
                ) -> tuple[int, dict[str, str], Any]:
    headers |= gateway.headers()
    async with gateway.http.request(method, url, headers=headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" \
            else await resp.read()
        return resp.status, dict(resp.headers), body


async def test_whole_image_range_and_head(served: RunningGateway) -> None:
    for url in await links(served):
        status, headers, whole = await fetch(served, url)
        assert status == 200 and whole[:8] == b"\x89PNG\r\n\x1a\n"
        assert headers["Content-Type"] == "image/png"
        assert headers["Content-Length"] == str(len(whole))
        assert headers["Cache-Control"] == "private, max-age=300"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Accept-Ranges"] == "bytes"
        # Only FileResponse sends validators: which path served it.
        sent_validators = "etag" in {name.lower() for name in headers}
        assert sent_validators is (served.state.storage.local_path is not _no_path)
        status, headers, part = await fetch(served, url, Range="bytes=0-9")
        assert (status, part) == (206, whole[:10])
        assert headers["Content-Range"] == f"bytes 0-9/{len(whole)}"
        status, _, tail = await fetch(served, url, Range="bytes=-5")
        assert (status, tail) == (206, whole[-5:])
        status, headers, empty = await fetch(served, url, "HEAD")
        assert (status, empty) == (200, b"")
        assert headers["Content-Length"] == str(len(whole))


async def test_the_modelmux_image_is_named_for_its_generation(served: RunningGateway) -> None:
    _, url = await links(served)
    _, headers, _ = await fetch(served, url)
    history_id = url.rsplit("/", 2)[-2]
    assert headers["Content-Disposition"] == f'inline; filename="{history_id}.png"'


async def test_range_refusals_are_in_each_surface_shape(served: RunningGateway) -> None:
    files, image = await links(served)
    _, _, whole = await fetch(served, files)
    past_end = f"bytes={len(whole) + 10}-"
    status, headers, body = await fetch(served, files, Range="pages=0-1")
    assert status == 400 and set(body) == {"code", "msg", "data"} and "Range" in body["msg"]
    status, headers, body = await fetch(served, image, Range="pages=0-1")
    assert status == 400 and body["code"] == "invalid_request" and "Range" in body["error"]
    for url, shape in ((files, {"code", "msg", "data"}), (image, {"error", "code"})):
        status, headers, body = await fetch(served, url, Range=past_end)
        assert (status, set(body)) == (416, shape)
        assert headers["Content-Type"] == "application/json"
        assert headers["Content-Range"] == f"bytes */{len(whole)}"


async def test_if_range_does_not_excuse_a_bad_range(served: RunningGateway) -> None:
    files, image = await links(served)
    _, headers, whole = await fetch(served, files)
    # The file path's own validator, so FileResponse would take the range; a stream
    # has none and sends the whole image whatever If-Range holds.
    if_range = headers.get("ETag", '"no-validator"')
    status, _, part = await fetch(served, files, Range="bytes=0-9", **{"If-Range": if_range})
    assert (status, part) == (206, whole[:10]) if "ETag" in headers else (200, whole)
    for url, shape in ((files, {"code", "msg", "data"}), (image, {"error", "code"})):
        for bad, refused in (("pages=0-1", 400), (f"bytes={len(whole) + 10}-", 416)):
            status, sent, body = await fetch(served, url, Range=bad, **{"If-Range": if_range})
            assert (status, sent["Content-Type"]) == (refused, "application/json"), body
            assert set(body) == shape


async def test_a_missing_image_is_a_json_404(served: RunningGateway) -> None:
    files, image = await links(served)
    remove_results(Path(served.settings.storage.url.removeprefix("file://")))
    status, _, body = await fetch(served, files)
    assert (status, body) == (404, {"code": 404, "msg": "file not found", "data": None})
    status, _, body = await fetch(served, image)
    assert (status, body) == (404, {"error": "the image file is missing",
                                    "code": "not_found"})


def remove_results(root: Path) -> None:
    for blob in root.glob("results/*/*"):
        blob.unlink()


async def test_several_ranges_stream_the_whole_image(gateway: RunningGateway,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.state.storage, "local_path", _no_path)
    files, _ = await links(gateway)
    _, _, whole = await fetch(gateway, files)
    status, headers, body = await fetch(gateway, files, Range="bytes=0-1,5-9")
    assert (status, body) == (200, whole)
    assert "Content-Range" not in headers


class PresigningStorage(LocalStorage):
    """Stands in for an object store: it has a URL of its own for every blob."""

    async def url_for(self, key: str, ttl_seconds: int, *,
                      filename: str | None = None) -> str | None:
        return f"https://bucket.example/{check_key(key)}?expires={ttl_seconds}"


def download_app(storage: LocalStorage, redirect_ttl: int | None) -> Starlette:
    @surface(native.render_error)
    async def endpoint(request: Request) -> Response:
        return await serve_blob(request, storage, request.path_params["key"],
                                content_type="image/png", render=native.render_error,
                                missing="gone", redirect_ttl=redirect_ttl)

    return Starlette(routes=[Route("/{key:path}", endpoint)])


@pytest.mark.parametrize(("storage_class", "redirect_ttl", "redirected"), [
    (PresigningStorage, 60, True), (PresigningStorage, None, False), (LocalStorage, 60, False)])
async def test_a_backend_url_is_a_redirect_when_asked_for(
        tmp_path: Path, storage_class: type[LocalStorage], redirect_ttl: int | None,
        redirected: bool) -> None:
    storage = storage_class(tmp_path)
    await storage.put("results/20261123/j-0.png", b"\x89PNG\r\n\x1a\nbytes", "image/png")
    transport = httpx.ASGITransport(app=download_app(storage, redirect_ttl))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        resp = await client.get("/results/20261123/j-0.png")
    if redirected:
        assert resp.status_code == 302
        assert resp.headers["location"] == \
            "https://bucket.example/results/20261123/j-0.png?expires=60"
        assert resp.headers["cache-control"] == "no-store"
    else:
        assert (resp.status_code, resp.content) == (200, b"\x89PNG\r\n\x1a\nbytes")
