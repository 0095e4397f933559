"""Scenario 5: the OpenAI-compatible surface with its images in the local folder and
in an S3 bucket, side by side in one run, as a ratio.

The bucket is moto's S3 server (``moto[server]``, in the test extra) on loopback,
started here as its own process: it measures what the S3 backend costs the gateway
(a PutObject per image, a HEAD when the b64_json answer reads it back, signing),
with a server far slower than a real object store's front end, on the same cores.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import aiohttp

from bench.scenarios import HOST, Scale, gateway_targets, openai_path
from bench.services import Service, free_port, start_gateway

BUCKET = "muxbench"
ACCESS_KEY, SECRET_KEY = "bench", "bench-secret"


async def start_moto(workdir: Path) -> tuple[Service, int]:
    port = free_port()
    service = Service("moto S3", [sys.executable, "-m", "moto.server", "-H", HOST,
                                  "-p", str(port)],
                      cwd=workdir, log=workdir / "moto.log")
    await service.wait_http(port, "/moto-api/", 30)
    # moto takes an unsigned request; the gateway's own are signed.
    async with aiohttp.ClientSession() as http, \
            http.put(f"http://{HOST}:{port}/{BUCKET}") as resp:
        if resp.status != 200:
            raise RuntimeError(f"moto refused the bucket: {resp.status}")
    return service, port


def s3_toml(port: int) -> str:
    return f"""
[storage.s3]
endpoint_url = "http://{HOST}:{port}"
region = "us-east-1"
path_style = true
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
"""


async def storage_paths(workdir: Path, fake_port: int, scale: Scale) -> dict[str, Any]:
    """The OpenAI surface's two gateway paths (b64_json, url) on each storage."""
    if importlib.util.find_spec("moto") is None:
        print("  moto is not installed: pip install -e '.[test]'", flush=True)
        return {"error": "moto[server] is not installed: pip install -e '.[test]'"}
    moto, moto_port = await start_moto(workdir)
    results: dict[str, Any] = {}
    try:
        for name, url, extra in (("local", "", ""),
                                 ("s3", f"s3://{BUCKET}/images", s3_toml(moto_port))):
            folder = workdir / f"s5-{name}"
            folder.mkdir()
            gateway, port = await start_gateway(folder, fake_port, url, extra)
            try:
                targets = gateway_targets(port, fake_port)
                del targets["direct"]
                print(f"  {name} storage:", flush=True)
                results[name] = await openai_path(targets, scale)
            finally:
                gateway.stop()
    finally:
        moto.stop()
    return results

