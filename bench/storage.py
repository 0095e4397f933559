"""Scenario 8: the OpenAI-compatible surface with its images in the local folder and
in an S3 bucket, side by side in one run, as a ratio.

The bucket is moto's S3 server (``moto[server]``, in the test extra) on loopback,
started here as its own process: it measures what the S3 backend costs the gateway
(a PutObject per image, a HEAD when the b64_json answer reads it back, signing),
with a server far slower than a real object store's front end, on the same cores.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from typing import Any

import aiohttp

from bench.scenarios import HOST, Scale, Target, gateway_targets, openai_path
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


def _append(extra: str, text: str) -> str:
    return text + extra


async def storage_paths(workdir: Path, fake_port: int, scale: Scale) -> dict[str, Any]:
    """The OpenAI surface's two gateway paths (b64_json, url) on a gateway with each
    storage, both running, their rounds taking turns (as scenario 1's paths do)."""
    if importlib.util.find_spec("moto") is None:
        print("  moto is not installed: pip install -e '.[test]'", flush=True)
        return {"error": "moto[server] is not installed: pip install -e '.[test]'"}
    moto, moto_port = await start_moto(workdir)
    gateways: list[Service] = []
    targets: dict[str, Target] = {}
    try:
        for name, url, extra in (("local", "", ""),
                                 ("s3", f"s3://{BUCKET}/images", s3_toml(moto_port))):
            folder = workdir / f"s8-{name}"
            folder.mkdir()
            gateway, port = await start_gateway(
                folder, fake_port, tweak=functools.partial(_append, extra),
                env={"MUXPROXY_STORAGE_URL": url} if url else None)
            gateways.append(gateway)
            for path, target in gateway_targets(port, fake_port).items():
                if path != "direct":
                    targets[f"{path} {name}"] = target
        figures = await openai_path(targets, scale)
    finally:
        for gateway in gateways:
            gateway.stop()
        moto.stop()
    return {name: {path: figures[f"{path} {name}"] for path in ("gateway", "gateway (url)")}
            for name in ("local", "s3")}
