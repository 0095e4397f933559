"""The peer gateways the gateway is measured beside, each installed on first use
into a folder of its own under ``bench/`` and pointed at the same fake upstream:

- LiteLLM's proxy (Python, a virtual environment of its own);
- Portkey's open-source gateway (Node, a pure pass-through with no persistence),
  from npm at a pinned version.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.services import FAKE_MODEL, ROOT, Service, free_port

LITELLM_KEY = "sk-bench-master-key-0123456789"
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
LITELLM_REQUIREMENT = "litellm[proxy]"

PORTKEY_PACKAGE = "@portkey-ai/gateway"
PORTKEY_VERSION = "1.15.2"
PORTKEY_DIR = ROOT / "bench" / ".portkey"


def _install(steps: list[list[str]], log: Path, *, cwd: Path | None = None) -> None:
    """Run each install step, raising RuntimeError with the log's tail on a failure."""
    with log.open("ab") as out:
        for argv in steps:
            print(f"  $ {' '.join(argv)}", flush=True)
            code = subprocess.call(argv, cwd=cwd, stdout=out,  # noqa: S603 - our own argv
                                   stderr=subprocess.STDOUT)
            if code != 0:
                tail = log.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{' '.join(argv[:3])} ... failed with {code}:\n{tail}")


# -- LiteLLM ----------------------------------------------------------------------

def ensure_litellm(log: Path) -> Path:
    """The ``litellm`` executable of bench/.venv-litellm, installing it on first use."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        _install([[sys.executable, "-m", "venv", str(LITELLM_VENV)],
                  [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet",
                   LITELLM_REQUIREMENT]], log)
    if not exe.exists():
        raise RuntimeError(f"{exe} missing after installing {LITELLM_REQUIREMENT}")
    return exe


def litellm_config(fake_port: int) -> str:
    return f"""model_list:
  - model_name: bench-image
    litellm_params:
      model: openai/{FAKE_MODEL}
      api_base: http://127.0.0.1:{fake_port}/v1
      api_key: sk-fake
litellm_settings:
  # gpt-image-1 takes no response_format: drop it, as OpenAI's own API would ignore it
  drop_params: true
general_settings:
  master_key: {LITELLM_KEY}
"""


async def start_litellm(workdir: Path, fake_port: int) -> tuple[Service, int]:
    exe = ensure_litellm(workdir / "litellm-install.log")
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(litellm_config(fake_port))
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": LITELLM_KEY,
           "PYTHONPATH": ""}
    service = Service("litellm", [str(exe), "--config", str(config), "--host", "127.0.0.1",
                                  "--port", str(port)],
                      cwd=workdir, log=workdir / "litellm.log", env=env)
    await service.wait_http(port, "/health/liveliness", 120)
    return service, port


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    out = subprocess.run([str(python), "-c", code],  # noqa: S603 - our own argv
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


# -- Portkey ----------------------------------------------------------------------

def _portkey_package() -> Path:
    return PORTKEY_DIR / "node_modules" / PORTKEY_PACKAGE


def ensure_portkey(log: Path) -> Path:
    """``start-server.js`` of the pinned Portkey gateway, installed with npm into
    bench/.portkey on first use (or when the pinned version changed)."""
    package = _portkey_package()
    if portkey_version() != PORTKEY_VERSION:
        PORTKEY_DIR.mkdir(exist_ok=True)
        manifest = {"name": "muxproxy-bench-portkey", "private": True}
        (PORTKEY_DIR / "package.json").write_text(json.dumps(manifest) + "\n")
        _install([["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts",
                   f"{PORTKEY_PACKAGE}@{PORTKEY_VERSION}"]], log, cwd=PORTKEY_DIR)
    script = package / "build" / "start-server.js"
    if not script.exists():
        raise RuntimeError(f"{script} missing after installing {PORTKEY_PACKAGE}")
    return script


def portkey_version() -> str | None:
    manifest = _portkey_package() / "package.json"
    if not manifest.exists():
        return None
    version: str = json.loads(manifest.read_text())["version"]
    return version


async def start_portkey(workdir: Path) -> tuple[Service, int]:
    """Portkey's gateway, headless. It needs no config: each request names its
    provider and upstream in headers (see :func:`portkey_headers`)."""
    script = ensure_portkey(workdir / "portkey-install.log")
    port = free_port()
    service = Service("portkey", ["node", str(script), f"--port={port}", "--headless"],
                      cwd=workdir, log=workdir / "portkey.log")
    await service.wait_http(port, "/", 60)
    return service, port


def portkey_headers(fake_port: int) -> dict[str, str]:
    return {"Authorization": "Bearer sk-fake", "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"http://127.0.0.1:{fake_port}/v1"}
