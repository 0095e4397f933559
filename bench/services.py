"""The processes a benchmark run starts: the fake upstream and the gateway (shipped
config with its providers pointed at the fake); the peer gateways are in
``peers.py``. Each is a :class:`Service` whose CPU time and memory are read from
``/proc``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.loadgen import Connection, HTTPError, encode

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = "mux-bench-key-0123456789"
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

def replace_once(text: str, old: str, new: str) -> str:
    if old not in text:
        raise RuntimeError(f"config.toml changed: cannot find {old!r} to point it at the fake")
    return text.replace(old, new, 1)


def gateway_config(fake_port: int) -> str:
    """The shipped config.toml, with the ``modelmax`` (openai-compatible), ``openai``
    (on the fake's slow route) and ``fal`` providers pointed at the fake upstream,
    and what the benchmark adds: its models,
    loopback callbacks, and an unlimited key. Provider concurrency is raised from the
    shipped 4/8 so the limit measured is the gateway's, not a configured queue."""
    fake = f"http://127.0.0.1:{fake_port}"
    text = (ROOT / "config.toml").read_text()
    text = replace_once(text, 'base_url = "https://api.modelmax.io/v1"\n'
                          'api_key = "${MODELMAX_API_KEY:-}"\n'
                          'timeout_seconds = 120\n'
                          'max_concurrency = 4',
                    f'base_url = "{fake}/v1"\napi_key = "sk-fake"\n'
                    'timeout_seconds = 120\nmax_concurrency = 64')
    text = replace_once(text, 'base_url = "https://api.openai.com/v1"\n'
                              'api_key = "${OPENAI_API_KEY:-}"\n',
                        f'base_url = "{fake}/slow/v1"\napi_key = "sk-fake"\n')
    text = replace_once(text, 'base_url = "https://queue.fal.run"\n'
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

[models."bench-slow"]
description = "benchmark: the fake OpenAI upstream that takes a real-ish generation time"

[[models."bench-slow".routes]]
provider = "openai"
model = "{FAKE_MODEL}"

[models."bench-queue"]
description = "benchmark: the fake fal queue"
routes = [{{ provider = "fal", model = "{FAL_APP}" }}]
"""


async def start_gateway(workdir: Path, fake_port: int, *,
                        tweak: Callable[[str], str] | None = None,
                        env: dict[str, str] | None = None,
                        workers: int = 1) -> tuple[Service, int]:
    """``muxproxy serve`` (``--workers``) on a copy of the shipped config (changed by
    ``tweak``), in ``workdir`` (its SQLite file and images land in ``workdir/data``
    unless ``env`` says otherwise); the log goes to ``gateway.log``."""
    port = free_port()
    config = workdir / "config.toml"
    text = gateway_config(fake_port)
    config.write_text(tweak(text) if tweak else text)
    env = {"PYTHONPATH": str(ROOT), "MUXPROXY_PORT": str(port),
           "MUXPROXY_PUBLIC_URL": f"http://127.0.0.1:{port}", **(env or {})}
    service = Service("gateway", [sys.executable, "-m", "muxproxy.cli", "serve", "--config",
                                  str(config), "--workers", str(workers)],
                      cwd=workdir, log=workdir / "gateway.log", env=env)
    await service.wait_http(port, "/readyz", 30)
    return service, port


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot, from /proc/stat: the share
    busy between two readings says whether the machine had a core to spare."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total else float("nan")
