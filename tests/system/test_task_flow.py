"""The native task API end to end over real HTTP with the demo provider."""

from __future__ import annotations

import io

from PIL import Image

from tests.support.gateway import RunningGateway


async def test_submit_poll_download(gateway: RunningGateway) -> None:
    async with gateway.http.post(
            f"{gateway.url}/api/v1/images/generations", headers=gateway.headers(),
            json={"model": "demo-image", "prompt": "a red fox", "aspect_ratio": "16:9",
                  "resolution": "1k"}) as resp:
        assert resp.status == 200
        body = await resp.json()
        assert resp.headers["x-request-id"]
    assert body["code"] == 200 and body["msg"] == "success"
    assert set(body["data"]) == {"taskId", "state"}
    assert body["data"]["state"] == "pending"

    task = await gateway.wait_terminal(body["data"]["taskId"])
    assert task["state"] == "completed"
    assert task["completeTime"] >= task["createTime"] > 1_600_000_000_000
    assert task["model"] == "demo/demo-image"
    [url] = task["resultUrls"]
    assert url.startswith(gateway.url + "/files/")
    async with gateway.http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(await resp.read()))
    assert image.format == "PNG"
    assert image.size == (1360, 768)
