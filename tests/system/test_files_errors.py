"""``/files`` refuses in JSON (the native shape, as every answer outside a
surface), a bad Range included; a good Range still gets its bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import RunningGateway


async def result_link(gateway: RunningGateway) -> str:
    task_id = await gateway.submit({"model": "demo-image", "prompt": "a lighthouse"})
    done = await gateway.wait_terminal(task_id)
    url: str = done["resultUrls"][0]
    return url


async def fetch(gateway: RunningGateway, url: str, **headers: str
                ) -> tuple[int, dict[str, str], Any]:
    async with gateway.http.get(url, headers=headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" \
            else await resp.read()
        return resp.status, dict(resp.headers), body


@pytest.mark.parametrize("value", ["bytes=abc", "pages=0-1", "bytes=5-2", "bytes"])
async def test_a_malformed_range_is_a_json_400(gateway: RunningGateway, value: str) -> None:
    url = await result_link(gateway)
    status, headers, body = await fetch(gateway, url, Range=value)
    assert status == 400, body
    assert headers["Content-Type"] == "application/json"
    assert set(body) == {"code", "msg", "data"} and body["code"] == 400
    assert "Range" in body["msg"]


async def test_a_range_past_the_end_is_a_json_416(gateway: RunningGateway) -> None:
    url = await result_link(gateway)
    status, _, whole = await fetch(gateway, url)
    assert status == 200
    status, headers, body = await fetch(gateway, url, Range=f"bytes={len(whole) + 10}-")
    assert status == 416
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Range"] == f"bytes */{len(whole)}"
    assert body["code"] == 416 and body["data"] is None


async def test_a_good_range_is_served(gateway: RunningGateway) -> None:
    url = await result_link(gateway)
    _, _, whole = await fetch(gateway, url)
    status, headers, part = await fetch(gateway, url, Range="bytes=0-9")
    assert (status, part) == (206, whole[:10])
    assert headers["Content-Range"] == f"bytes 0-9/{len(whole)}"


async def test_signature_and_missing_file_refusals_are_json(gateway: RunningGateway) -> None:
    url = await result_link(gateway)
    token_at = url.index("/files/") + len("/files/")
    forged = url[:token_at] + "x" + url[token_at + 1:]
    status, headers, body = await fetch(gateway, forged)
    assert (status, headers["Content-Type"]) == (403, "application/json")
    assert body == {"code": 403, "msg": "invalid link signature", "data": None}
    remove_results(Path(gateway.settings.storage.url.removeprefix("file://")))
    status, headers, body = await fetch(gateway, url, Range="bytes=0-9")
    assert (status, headers["Content-Type"]) == (404, "application/json")
    assert body == {"code": 404, "msg": "file not found", "data": None}


def remove_results(root: Path) -> None:
    for blob in root.glob("results/*/*"):
        blob.unlink()
