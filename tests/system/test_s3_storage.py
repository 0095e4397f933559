"""The gateway with its images in an S3 bucket (a real S3-compatible server the
fixture starts as its own process): the three surfaces and the callback payload,
with downloads streamed through the gateway or, with ``storage.redirect``,
answered by presigned bucket URLs; the retention sweep on the bucket."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest

from muxproxy.clock import ManualClock
from tests.support.gateway import RunningGateway, merge, run_gateway
from tests.support.s3 import Bucket, client_for, list_objects
from tests.support.wait import eventually
from tests.support.webhooks import LOOPBACK, Receiver

PROMPT = "a lighthouse at dusk"
TTL = 900


@pytest.fixture(params=[False, True], ids=["streamed", "redirect"])
def redirect(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as running:
        yield running


@pytest.fixture
async def s3_gateway(config: dict[str, Any], s3_bucket: Bucket, redirect: bool
                     ) -> AsyncIterator[RunningGateway]:
    storage = s3_bucket.storage_config(redirect=redirect, url_ttl_seconds=TTL)
    async with run_gateway(merge(merge(config, {"storage": storage}), LOOPBACK)) as gw:
        yield gw


async def stored(bucket: Bucket, key: str) -> bytes:
    async with client_for(bucket.endpoint) as client:
        answer = await client.get_object(Bucket=bucket.name, Key=f"images/{key}")
        data: bytes = await answer["Body"].read()
        return data


async def fetch(http: aiohttp.ClientSession, url: str, **headers: str
                ) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, headers=headers, allow_redirects=False) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def assert_presigned(url: str, bucket: Bucket, ttl: int) -> None:
    """A presigned GET on the bucket itself, living ``ttl`` seconds at most."""
    assert url.startswith(f"{bucket.endpoint}/{bucket.name}/images/results/"), url
    query = parse_qs(urlsplit(url).query)
    assert 0 < int(query["X-Amz-Expires"][0]) <= ttl
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]


async def check_link(gw: RunningGateway, bucket: Bucket, redirect: bool, url: str,
                     image: bytes) -> None:
    """A link handed out to a client: the bucket's presigned URL with redirect on,
    the gateway's /files link streaming from the bucket with it off."""
    if redirect:
        assert_presigned(url, bucket, TTL)
    else:
        assert url.startswith(f"{gw.url}/files/"), url
        status, headers, _ = await fetch(gw.http, url, Range="bytes=0-9")
        assert (status, headers["Content-Range"]) == (206, f"bytes 0-9/{len(image)}")
    status, _, body = await fetch(gw.http, url)
    assert (status, body) == (200, image)


async def check_gateway_download(gw: RunningGateway, bucket: Bucket, redirect: bool,
                                 url: str, image: bytes, disposition: str | None = None,
                                 **headers: str) -> None:
    """A gateway address (/files, /image): a 302 to the bucket with redirect on, the
    bytes streamed from the bucket with it off; either way with the
    ``Content-Disposition`` the address gives, if any."""
    status, answer, body = await fetch(gw.http, url, **headers)
    if redirect:
        assert status == 302 and answer["Cache-Control"] == "no-store"
        assert_presigned(answer["Location"], bucket, TTL)
        status, answer, body = await fetch(gw.http, answer["Location"])
    else:
        assert answer["Content-Length"] == str(len(image))
    assert answer["Content-Type"] == "image/png"
    assert answer.get("Content-Disposition") == disposition
    assert (status, body) == (200, image)


async def test_the_surfaces_and_callbacks_serve_images_from_the_bucket(
        s3_gateway: RunningGateway, s3_bucket: Bucket, redirect: bool,
        receiver: Receiver, tmp_path: Path) -> None:
    gw = s3_gateway
    # Native, with a callback.
    task_id = await gw.submit({"model": "demo-image", "prompt": PROMPT,
                               "callback_url": receiver.url()})
    task = await gw.wait_terminal(task_id)
    job = await gw.state.store.get_job(task_id)
    assert job is not None and job.result is not None
    key = job.result.images[0].key
    image = await stored(s3_bucket, key)
    assert image.startswith(b"\x89PNG")
    await check_link(gw, s3_bucket, redirect, task["resultUrls"][0], image)
    await check_gateway_download(gw, s3_bucket, redirect, gw.state.signer.url(key), image)
    [hit] = await receiver.wait_hits(1)
    [link] = orjson.loads(hit.json["data"]["resultJson"])["resultUrls"]
    await check_link(gw, s3_bucket, redirect, link, image)

    # OpenAI: url and b64_json.
    async with gw.http.post(f"{gw.url}/v1/images/generations", headers=gw.headers(),
                            json={"model": "demo-image", "prompt": PROMPT}) as resp:
        assert resp.status == 200, await resp.text()
        openai_id = resp.headers["x-muxproxy-job-id"]
        [item] = (await resp.json())["data"]
    job = await gw.state.store.get_job(openai_id)
    assert job is not None and job.result is not None
    await check_link(gw, s3_bucket, redirect, item["url"],
                     await stored(s3_bucket, job.result.images[0].key))
    async with gw.http.post(f"{gw.url}/v1/images/generations", headers=gw.headers(),
                            json={"model": "demo-image", "prompt": PROMPT,
                                  "response_format": "b64_json"}) as resp:
        assert resp.status == 200, await resp.text()
        b64_id = resp.headers["x-muxproxy-job-id"]
        [item] = (await resp.json())["data"]
    job = await gw.state.store.get_job(b64_id)
    assert job is not None and job.result is not None
    assert base64.b64decode(item["b64_json"]) == \
        await stored(s3_bucket, job.result.images[0].key)

    # ModelMux: outputUrl and the /image route.
    async with gw.http.post(f"{gw.url}/api/v1/generations", headers=gw.headers(),
                            json={"model": "demo-image", "prompt": PROMPT}) as resp:
        assert resp.status == 200, await resp.text()
        mux_id = (await resp.json())["historyId"]
    await gw.wait_terminal(mux_id)
    async with gw.http.get(f"{gw.url}/api/v1/generations/{mux_id}",
                           headers=gw.headers()) as resp:
        output_url = (await resp.json())["outputUrl"]
    job = await gw.state.store.get_job(mux_id)
    assert job is not None and job.result is not None
    image = await stored(s3_bucket, job.result.images[0].key)
    await check_link(gw, s3_bucket, redirect, output_url, image)
    await check_gateway_download(gw, s3_bucket, redirect,
                                 f"{gw.url}/api/v1/generations/{mux_id}/image", image,
                                 f'inline; filename="{mux_id}.png"', **gw.headers())

    # Every image is in the bucket under the prefix, none on the local disk.
    objects = await list_objects(s3_bucket)
    assert len(objects) == 4 and all(o.startswith("images/results/") for o in objects)
    assert not (tmp_path / "images").exists()


async def test_retention_deletes_expired_results_from_the_bucket(
        config: dict[str, Any], s3_bucket: Bucket) -> None:
    clock = ManualClock()
    storage = s3_bucket.storage_config(retention_days=1, sweep_interval_seconds=600,
                                       url_ttl_seconds=10 * 86400)
    async with run_gateway(merge(config, {"storage": storage}), clock=clock) as gw:
        task_id = await gw.submit({"model": "demo-image", "prompt": PROMPT})
        link = (await gw.wait_terminal(task_id))["resultUrls"][0]
        assert len(await list_objects(s3_bucket)) == 1
        passes = gw.state.retention.passes
        clock.advance(86400 + 600)
        await eventually(lambda: gw.state.retention.passes > passes)
        assert await list_objects(s3_bucket) == []
        status, _, body = await fetch(gw.http, link)
        assert status == 404 and orjson.loads(body)["msg"] == "file not found"
