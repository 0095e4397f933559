"""Two gateway replicas, each its own OS process, on one PostgreSQL database and one
S3 bucket: an image written through one is downloaded through the other."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tests.support.gateway import KEY_A
from tests.support.process import gateway_process
from tests.support.s3 import KEY, REGION, SECRET, Bucket

HEADERS = {"Authorization": f"Bearer {KEY_A}"}


def write_config(path: Path, database: str, bucket: Bucket) -> Path:
    path.write_text(f"""
[server]
port = "${{MUXPROXY_PORT}}"
public_url = "${{MUXPROXY_PUBLIC_URL}}"
secret = "replica-test-secret-0123"
graceful_shutdown_seconds = 1
[database]
url = "{database}"
pool_size = 2
[storage]
url = "{bucket.url("shared")}"
[storage.s3]
endpoint_url = "{bucket.endpoint}"
region = "{REGION}"
path_style = true
access_key_id = "{KEY}"
secret_access_key = "{SECRET}"
max_attempts = 1
[logging]
level = "warning"
[[keys]]
name = "alpha"
key = "{KEY_A}"
unlimited = true
[providers.demo]
kind = "demo"
[models."demo-image"]
routes = [{{ provider = "demo", model = "demo-image" }}]
""")
    return path


async def completed(http: aiohttp.ClientSession, base: str, task_id: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            async with http.get(f"{base}/api/v1/images/generations",
                                params={"task_id": task_id}, headers=HEADERS) as resp:
                data: dict[str, Any] = (await resp.json())["data"]
            if data["state"] in ("completed", "failed"):
                assert data["state"] == "completed", data
                return data
            await asyncio.sleep(0.02)


async def test_an_image_written_through_one_replica_downloads_through_the_other(
        tmp_path: Path, postgres_url: str, s3_bucket: Bucket) -> None:
    config = write_config(tmp_path / "muxproxy.toml", postgres_url, s3_bucket)
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        one = await stack.enter_async_context(gateway_process(config))
        two = await stack.enter_async_context(gateway_process(config))
        for writer, reader in ((one, two), (two, one)):
            async with http.post(f"{writer.url}/api/v1/images/generations", headers=HEADERS,
                                 json={"model": "demo-image", "prompt": "a lighthouse"}
                                 ) as resp:
                assert resp.status == 200, await resp.text()
                task_id = (await resp.json())["data"]["taskId"]
            link = (await completed(http, writer.url, task_id))["resultUrls"][0]
            assert link.startswith(f"{writer.url}/files/")
            async with http.get(link) as resp:
                assert resp.status == 200
                image = await resp.read()
            assert image.startswith(b"\x89PNG")
            # The other replica: the same link, the job's status and its /image.
            async with http.get(f"{reader.url}{urlsplit(link).path}") as resp:
                assert (resp.status, await resp.read()) == (200, image)
            again = (await completed(http, reader.url, task_id))["resultUrls"][0]
            assert again.startswith(f"{reader.url}/files/")
            async with http.get(again) as resp:
                assert (resp.status, await resp.read()) == (200, image)
            async with http.get(f"{reader.url}/api/v1/generations/{task_id}/image",
                                headers=HEADERS) as resp:
                assert (resp.status, await resp.read()) == (200, image)
