"""``muxproxy generate`` as a user runs it: a child process against a live gateway."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from muxproxy.cli_client import NoGateway, locate
from tests.support.gateway import (
    KEY_A,
    RunningGateway,
    base_config,
    free_socket,
    merge,
    run_gateway,
)
from tests.support.images import png_bytes


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    config = merge(base_config(tmp_path), {
        "providers": {"broken": {"kind": "demo", "options": {"failure_rate": 1.0}}},
        "models": {"demo-fail": {"routes": [{"provider": "broken", "model": "b"}]}}})
    async with run_gateway(config) as running:
        yield running


async def generate(cwd: Path, *args: str, url: str | None, key: str | None = KEY_A,
                   stderr: int | None = None) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUXPROXY_")}
    env.update({"MUXPROXY_URL": url} if url else {})
    env.update({"MUXPROXY_API_KEY": key} if key else {})
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "muxproxy.cli", "generate", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr)
    out, err = await asyncio.wait_for(child.communicate(), 60)
    return Run(child.returncode or 0, out.decode(), (err or b"").decode())


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """Where the command runs (the gateway's own files are in tmp_path)."""
    path = tmp_path / "cli"
    path.mkdir()
    return path


async def test_generate_writes_the_files_and_prints_their_paths(
        gateway: RunningGateway, here: Path) -> None:
    run = await generate(here, "a red fox in snow", "--model", "demo-image", "-n", "2",
                         "--aspect-ratio", "16:9", "--resolution", "1k", "--out", "fox.png",
                         url=gateway.url)
    assert run.code == 0, run.err
    assert run.out.split() == ["fox-1.png", "fox-2.png"]
    for name in run.out.split():
        with Image.open(here / name) as image:
            assert image.width > image.height
    # Not a terminal: one plain line per state, with the elapsed time and the provider.
    last = run.err.splitlines()[-1].split()
    assert (last[1], last[2][-1], last[3]) == ("completed", "s", "demo/demo-image")
    assert "completed" in run.err and "demo/demo-image" in run.err and "\r" not in run.err


async def test_edit_with_a_file_and_a_mask_as_json(gateway: RunningGateway,
                                                   here: Path) -> None:
    (here / "a.png").write_bytes(png_bytes())
    (here / "m.png").write_bytes(png_bytes())
    run = await generate(here, "make it blue", "--model", "demo-image", "--edit", "a.png",
                         "--mask", "m.png", "--json", url=gateway.url)
    assert run.code == 0, run.err
    answer = json.loads(run.out)
    assert answer["state"] == "completed" and len(answer["files"]) == 1
    assert (here / answer["files"][0]).read_bytes().startswith(b"\x89PNG")
    job = await gateway.state.store.get_job(answer["id"])
    assert job is not None and len(job.request.images) == 1 and job.request.mask is not None


async def test_async_prints_the_job_id_and_exits(gateway: RunningGateway,
                                                 here: Path) -> None:
    run = await generate(here, "a fox", "--model", "demo-image-async", "--async",
                         url=gateway.url)
    assert run.code == 0, run.err
    job = await gateway.state.store.get_job(run.out.strip())
    assert job is not None and job.model == "demo-image-async"
    assert await asyncio.to_thread(lambda: list(here.iterdir())) == []


async def test_a_failing_model_exits_1_with_the_gateways_message(
        gateway: RunningGateway, here: Path) -> None:
    run = await generate(here, "a fox", "--model", "demo-fail", url=gateway.url)
    assert run.code == 1
    assert "failed:" in run.err and "Traceback" not in run.err
    refused = await generate(here, "a fox", "--model", "nope", url=gateway.url)
    assert refused.code == 2 and "unknown model 'nope'" in refused.err
    wrong = await generate(here, "a fox", url=gateway.url, key="sk-wrong")
    assert wrong.code == 2 and "invalid API key" in wrong.err


async def test_an_unreachable_gateway_exits_2(here: Path) -> None:
    sock = free_socket()  # bound, never listening: nothing answers there
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        run = await generate(here, "a fox", url=url)
    finally:
        sock.close()
    assert run.code == 2 and "cannot reach the gateway" in run.err
    usage = await generate(here, "a fox", "--mask", "m.png", url=url)
    assert usage.code == 2 and "--mask needs an --edit image" in usage.err


async def test_live_progress_on_a_terminal(gateway: RunningGateway, here: Path) -> None:
    leader, follower = pty.openpty()
    try:
        run = await generate(here, "a fox", "--model", "demo-image-async",
                             url=gateway.url, stderr=follower)
        os.close(follower)
        screen = await asyncio.to_thread(_drain, leader)
    finally:
        os.close(leader)
    assert run.code == 0
    assert "\r" in screen and "completed" in screen and "demo-queue/demo-image" in screen
    assert " s " in screen  # the elapsed time


def _drain(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child's end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_where_the_gateway_is_found(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[server]\npublic_url = "http://10.9.9.9:8080"\nsecret = '
                      '"0123456789abcdef0123"\n[[keys]]\nname = "first"\nkey = "from-config"\n'
                      '[providers.demo]\nkind = "demo"\n[models.m]\n'
                      'routes = [{ provider = "demo", model = "m" }]\n')
    none = argparse.Namespace(url=None, api_key=None, config=str(config))
    found = locate(none, {})
    assert (found.url, found.api_key) == ("http://10.9.9.9:8080", "from-config")
    env = {"MUXPROXY_URL": "http://env:1/", "MUXPROXY_API_KEY": "from-env"}
    assert locate(none, env).url == "http://env:1" and locate(none, env).api_key == "from-env"
    flags = argparse.Namespace(url="http://flag:2", api_key="from-flag", config=str(config))
    assert (locate(flags, env).url, locate(flags, env).api_key) == ("http://flag:2",
                                                                     "from-flag")
    missing = argparse.Namespace(url=None, api_key=None, config=str(tmp_path / "none.toml"))
    with pytest.raises(NoGateway, match="no gateway address"):
        locate(missing, {"MUXPROXY_API_KEY": "k"})
