"""``muxproxy copy-storage``: images move from a folder to a bucket, and the links
handed out before the move keep working once ``storage.url`` names the bucket."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.gateway import KEY_A, RunningGateway, base_config, merge, run_gateway
from tests.support.s3 import KEY, REGION, SECRET, Bucket, list_objects


def write_config(path: Path, bucket: Bucket) -> Path:
    path.write_text(f"""
[server]
secret = "test-secret-0123456789"
[storage.s3]
endpoint_url = "{bucket.endpoint}"
region = "{REGION}"
path_style = true
access_key_id = "${{TEST_S3_KEY}}"
secret_access_key = "${{TEST_S3_SECRET}}"
max_attempts = 1
""")
    return path


async def copy_storage(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "muxproxy.cli", "copy-storage", "--config", str(config), *args,
        env={**os.environ, "TEST_S3_KEY": KEY, "TEST_S3_SECRET": SECRET},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def get(gw: RunningGateway, url: str) -> tuple[int, bytes]:
    # The link as handed out, on the gateway now serving (another port in this test).
    address = f"{gw.url}{urlsplit(url).path}"
    async with gw.http.get(address, headers={"Authorization": f"Bearer {KEY_A}"}) as resp:
        return resp.status, await resp.read()


async def test_images_move_to_a_bucket_and_old_links_keep_working(
        tmp_path: Path, s3_bucket: Bucket) -> None:
    config = base_config(tmp_path)
    folder = config["storage"]["url"]
    async with run_gateway(config) as gw:
        task_id = await gw.submit({"model": "demo-image", "prompt": "a lighthouse"})
        native_link = (await gw.wait_terminal(task_id))["resultUrls"][0]
        async with gw.http.post(f"{gw.url}/v1/images/generations", headers=gw.headers(),
                                json={"model": "demo-image", "prompt": "a fox"}) as resp:
            openai_link = (await resp.json())["data"][0]["url"]
        image_address = f"{gw.url}/api/v1/generations/{task_id}/image"
        before = {url: await get(gw, url) for url in (native_link, openai_link, image_address)}
    assert all(status == 200 for status, _ in before.values())

    cli_config = write_config(tmp_path / "copy.toml", s3_bucket)
    target = s3_bucket.url("moved")
    code, out, err = await copy_storage(cli_config, "--from", folder, "--to", target)
    assert (code, out.strip()) == (0, "copied 2, already there 0, deleted from the source 0, "
                                      "failed 0"), err
    code, out, err = await copy_storage(cli_config, "--from", folder, "--to", target,
                                        "--delete-source")
    assert (code, out.strip()) == (0, "copied 0, already there 2, deleted from the source 2, "
                                      "failed 0"), err
    assert not [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    objects = await list_objects(s3_bucket)
    assert len(objects) == 2 and all(o.startswith("moved/results/") for o in objects)

    moved = merge(config, {"storage": s3_bucket.storage_config("moved")})
    async with run_gateway(moved) as gw:
        for url, answer in before.items():
            assert await get(gw, url) == answer


async def test_bad_arguments_are_refused(tmp_path: Path, s3_bucket: Bucket) -> None:
    cli_config = write_config(tmp_path / "copy.toml", s3_bucket)
    code, _, err = await copy_storage(cli_config, "--from", "s3://b-1/x", "--to", "s3://b-1/x/")
    assert code == 2 and "--from and --to name the same storage" in err
    code, _, err = await copy_storage(cli_config, "--from", "gs://b/x", "--to", "s3://b-1/x")
    assert code == 2 and "storage.url: unknown scheme 'gs'" in err
    code, out, err = await copy_storage(cli_config, "--from", "s3://no-such-bucket-1/x",
                                        "--to", f"file://{tmp_path}/out")
    assert code == 1 and "cannot list s3://no-such-bucket-1/x" in err, (out, err)
