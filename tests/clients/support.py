"""The real-client matrix: what its suites share.

Each client runs against a live gateway (:func:`tests.support.gateway.run_gateway`,
uvicorn on a loopback port) on the demo provider, built from nothing but the base
URL and an API key. Clients other than openai-python run as child processes: the
Node ones from ``tests/clients/node`` (``npm ci`` there installs them from the
committed lockfile), LiteLLM and LangChain from ``tests/clients/python`` with this
interpreter (the test extra installs them; LiteLLM's import is slow and noisy).
The one rule for a missing client: under ``CI=true`` its tests fail (CI must run
them); elsewhere they are skipped with a message saying how to install it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest

from tests.support.gateway import KEY_A, base_config, merge, run_gateway
from tests.support.images import png_bytes

HERE = Path(__file__).parent
NODE_DIR = HERE / "node"
# A GPT Image id, which the SDKs treat as OpenAI's GPT Image (b64_json by default, no
# response_format sent), and an id they do not, both served by the demo renderer.
GPT_MODEL = "gpt-image-1"
OTHER_MODEL = "demo-image"
# A client's whole run, its start included (LiteLLM alone imports for ~15 s on a
# busy machine).
CLIENT_TIMEOUT = 120.0


def matrix_config(tmp_path: Path) -> dict[str, Any]:
    return merge(base_config(tmp_path), {"models": {
        GPT_MODEL: {"routes": [{"provider": "demo", "model": "gpt-image-1"}]}}})


def unavailable(what: str, how: str) -> NoReturn:
    message = f"{what} is not installed: {how}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def need_node() -> str:
    """The ``node`` binary, with the matrix's packages installed next to the cases."""
    node = shutil.which("node")
    if node is None:
        unavailable("Node.js", "install Node 20 or later (apt-get install nodejs npm)")
    for package in ("openai", "ai", "@ai-sdk/openai"):
        if not (NODE_DIR / "node_modules" / package / "package.json").is_file():
            unavailable(f"the npm package {package}",
                        f"run `npm ci` in {NODE_DIR.relative_to(HERE.parent.parent)}")
    return node


def need_python_package(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        unavailable(f"the Python package {package}", "pip install -e '.[test]'")


async def run_client(argv: list[str], env: dict[str, str], cwd: Path
                     ) -> dict[str, dict[str, Any]]:
    """Run a client's cases as one child process: each prints a JSON line
    ``{"case", "ok", "result" | "error"}``. Returns them by case."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [orjson.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: "
                             f"{stderr.decode()[-2000:]}")
    return {line["case"]: line for line in lines}


def run_matrix(tmp_path: Path, argv: list[str], cwd: Path) -> dict[str, dict[str, Any]]:
    """Start a gateway, run the client's cases against it, stop it: on an event loop of
    its own in a thread, so a module's tests share one run (a client's start can take
    seconds) without sharing pytest-asyncio's loop."""
    async def run() -> dict[str, dict[str, Any]]:
        async with run_gateway(matrix_config(tmp_path)) as gateway:
            return await run_client(argv, client_env(f"{gateway.url}/v1", tmp_path), cwd)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def case(results: dict[str, dict[str, Any]], name: str) -> Any:
    """A case's result; the client's own error when it failed."""
    line = results.get(name)
    assert line is not None, f"case {name!r} did not run"
    assert line["ok"], f"{name}: {line['error']}"
    return line["result"]


PNG_1024 = {"format": "png", "width": 1024, "height": 1024}


def landscape_png(image: dict[str, Any]) -> bool:
    """An edit of the cases' 64x48 input: a PNG that keeps its landscape shape (an
    edit without a size follows its input's aspect)."""
    return bool(image["format"] == "png" and image["width"] > image["height"])


def client_env(base_url: str, tmp_path: Path, key: str = KEY_A) -> dict[str, str]:
    # 4:3, so that an edit's output shows it followed its input.
    image = tmp_path / "fox.png"
    image.write_bytes(png_bytes(64, 48))
    return {"MUX_BASE_URL": base_url, "MUX_API_KEY": key, "MUX_IMAGE": str(image),
            "MUX_MODEL_GPT": GPT_MODEL, "MUX_MODEL_OTHER": OTHER_MODEL}
