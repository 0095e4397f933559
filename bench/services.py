"""The processes a benchmark run starts: the fake upstream, the gateway (shipped
config with its providers pointed at the fake) and LiteLLM's proxy (in a virtual
environment of its own, made on first use). Each is a :class:`Service` whose CPU
time and memory are read from ``/proc``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.loadgen import Connection, HTTPError, encode

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = "mux-bench-key-0123456789"
LITELLM_KEY = "sk-bench-master-key-0123456789"
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
LITELLM_REQUIREMENT = "litellm[proxy]"
FAKE_MODEL = "gpt-image-1"
FAL_APP = "fal-ai/flux/dev"
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    def __init__(self, name: str, argv: list[str], *, cwd: Path, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own argv
                argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out,
                stderr=subprocess.STDOUT)

    async def wait_http(self, port: int, path: str, timeout: float,
                        headers: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        raw = encode("GET", "127.0.0.1", port, path, headers)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            try:
                conn = await Connection.open("127.0.0.1", port)
                try:
                    status, _ = await conn.request(raw)
                finally:
                    conn.close()
                if status == 200:
                    return
            except (OSError, HTTPError):
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready on port {port} after {timeout:g} s")

    def _stat(self) -> list[str]:
        text = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return text[text.rindex(")") + 2:].split()

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (this process only; it starts no children)."""
        fields = self._stat()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def children(self) -> list[int]:
        """The pids of the processes this one started (``serve --workers N``'s workers)."""
        pid = self.proc.pid
        with contextlib.suppress(OSError):
            return [int(p) for p in
                    Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return []

    def memory_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MB, summed over the workers when there are any."""
        rss = peak = 0.0
        for pid in self.children() or [self.proc.pid]:
            values = {}
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0]) / 1024
            rss, peak = rss + values["VmRSS"], peak + values["VmHWM"]
        return rss, peak

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def start_fake(workdir: Path, polls: int) -> tuple[Service, int]:
    port = free_port()
    service = Service("fake upstream", [sys.executable, str(ROOT / "bench" / "fake_upstream.py"),
                                        str(port), str(polls)],
                      cwd=workdir, log=workdir / "fake.log",
                      env={"PYTHONPATH": str(ROOT)})
    await service.wait_http(port, "/stats", 20)
    return service, port


# -- the gateway ------------------------------------------------------------------

def _replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise RuntimeError(f"config.toml changed: cannot find {old!r} to point it at the fake")
    return text.replace(old, new, 1)


def gateway_config(fake_port: int) -> str:
    """The shipped config.toml, with the ``modelmax`` (openai-compatible) and ``fal``
    providers pointed at the fake upstream, and what the benchmark adds: its models,
    loopback callbacks, and an unlimited key. Provider concurrency is raised from the
    shipped 4/8 so the limit measured is the gateway's, not a configured queue."""
    fake = f"http://127.0.0.1:{fake_port}"
    text = (ROOT / "config.toml").read_text()
    text = _replace(text, 'base_url = "https://api.modelmax.io/v1"\n'
                          'api_key = "${MODELMAX_API_KEY:-}"\n'
                          'timeout_seconds = 120\n'
                          'max_concurrency = 4',
                    f'base_url = "{fake}/v1"\napi_key = "sk-fake"\n'
                    'timeout_seconds = 120\nmax_concurrency = 64')
    text = _replace(text, 'base_url = "https://queue.fal.run"\n'
                          'api_key = "${FAL_KEY:-}"\n'
                          'timeout_seconds = 60\n'
                          'max_concurrency = 8',
                    f'base_url = "{fake}"\napi_key = "fal-key:secret"\n'
                    'timeout_seconds = 60\nmax_concurrency = 64')
    return text + f"""
# -- added by bench/ ----------------------------------------------------------
[webhooks]
allow_networks = ["127.0.0.0/8"]

[[keys]]
name = "bench"
key = "{BENCH_KEY}"
unlimited = true

[models."bench-image"]
description = "benchmark: the fake OpenAI-compatible upstream, b64_json"

[[models."bench-image".routes]]
provider = "modelmax"
model = "{FAKE_MODEL}"
params = {{ response_format = "b64_json" }}

[models."bench-image-url"]
description = "benchmark: the fake OpenAI-compatible upstream, url"

[[models."bench-image-url".routes]]
provider = "modelmax"
model = "{FAKE_MODEL}"
params = {{ response_format = "url" }}

[models."bench-queue"]
description = "benchmark: the fake fal queue"
routes = [{{ provider = "fal", model = "{FAL_APP}" }}]
"""


async def start_gateway(workdir: Path, fake_port: int, *, database_url: str | None = None,
                        workers: int = 1) -> tuple[Service, int]:
    """``muxproxy serve`` on a copy of the shipped config, in ``workdir`` (its SQLite
    file, unless ``database_url`` names another database, and its images land in
    ``workdir/data``); the log goes to ``gateway.log``."""
    port = free_port()
    config = workdir / "config.toml"
    config.write_text(gateway_config(fake_port))
    env = {"PYTHONPATH": str(ROOT), "MUXPROXY_PORT": str(port),
           "MUXPROXY_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    if database_url is not None:
        env["MUXPROXY_DATABASE_URL"] = database_url
    service = Service("gateway", [sys.executable, "-m", "muxproxy.cli", "serve", "--config",
                                  str(config), "--workers", str(workers)],
                      cwd=workdir, log=workdir / "gateway.log", env=env)
    await service.wait_http(port, "/readyz", 30)
    return service, port


# -- LiteLLM ----------------------------------------------------------------------

def ensure_litellm(log: Path) -> Path:
    """The ``litellm`` executable of bench/.venv-litellm, installing it on first use.
    Raises RuntimeError saying what failed."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    with log.open("ab") as out:
        for argv in ([sys.executable, "-m", "venv", str(LITELLM_VENV)],
                     [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet",
                      LITELLM_REQUIREMENT]):
            print(f"  $ {' '.join(argv)}", flush=True)
            code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
            if code != 0:
                tail = log.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{' '.join(argv[:3])} ... failed with {code}:\n{tail}")
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
