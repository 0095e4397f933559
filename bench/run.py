"""The benchmark suite: ``python bench/run.py`` (``--quick`` for a short pass,
``--no-litellm`` / ``--no-portkey`` to leave a peer out, ``--only 1,3`` or
``--only pg-workers`` for some scenarios).

Starts a fake upstream, the gateway (shipped config, SQLite) and the peer gateways
(Portkey's and LiteLLM's) as separate processes, drives them from this one, prints
a table with each figure, its target and its ratio to the direct path and to each
peer, and writes the figures as JSON to bench/results/. It reports; it never fails
on a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import replicas, report, scenarios, storage, streaming  # noqa: E402
from bench.peers import (  # noqa: E402
    litellm_version,
    portkey_version,
    start_litellm,
    start_portkey,
)
from bench.pg_workers import pg_workers  # noqa: E402
from bench.services import Service, start_fake, start_gateway  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# Scenarios by number, and the names they also answer to.
SCENARIOS = (1, 2, 3, 4, 5, 6, 7, 8)
NAMES = {"openai": 1, "native": 2, "callbacks": 3, "table-size": 4, "pg-workers": 5,
         "replicas": 6, "streaming": 7, "storage": 8}


def chosen(only: str | None) -> set[int]:
    if not only:
        return set(SCENARIOS)
    picked = set()
    for part in only.split(","):
        part = part.strip()
        number = NAMES.get(part) or (int(part) if part.isdigit() else None)
        if number not in SCENARIOS:
            raise SystemExit(f"--only: unknown scenario {part!r} (1-8 or "
                             f"{', '.join(NAMES)})")
        picked.add(number)
    return picked


def machine() -> dict[str, Any]:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


def load_average() -> float:
    """The 1-minute load average: other work on the machine moves every figure."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return float("nan")


def loaded_modules(service: Service) -> dict[str, bool]:
    """Whether the gateway process really runs uvloop and httptools (their native
    modules are mapped into it)."""
    maps = Path(f"/proc/{service.proc.pid}/maps").read_text()
    return {"uvloop": "/uvloop/" in maps, "httptools": "/httptools/" in maps}


@contextlib.asynccontextmanager
async def gateway_in(folder: Path, fake_port: int, workers: int = 1
                     ) -> AsyncIterator[tuple[Service, int]]:
    """A fresh gateway (and database) in a new ``folder``, stopped on leaving."""
    os.mkdir(folder)
    gateway, port = await start_gateway(folder, fake_port, workers=workers)
    try:
        yield gateway, port
    finally:
        gateway.stop()


@contextlib.asynccontextmanager
async def peer(record: dict[str, Any], left_out: bool, flag: str,
               starting: Coroutine[Any, Any, tuple[Service, int]],
               version: Callable[[], str | None]) -> AsyncIterator[int | None]:
    """A peer gateway's port while it runs, or None (and why, in ``record``) when it
    was left out or could not start: a missing peer never stops the run."""
    if left_out:
        starting.close()
        record["error"] = f"left out ({flag})"
        yield None
        return
    try:
        service, port = await starting
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  peer unavailable: {record['error']}", flush=True)
        yield None
        return
    record["version"] = version()
    try:
        yield port
    finally:
        service.stop()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    scale = scenarios.QUICK if args.quick else scenarios.Scale()
    only = chosen(args.only)
    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "quick": args.quick, "scale": scale.__dict__,
        "litellm": {"version": None, "error": None},
        "portkey": {"version": None, "error": None}, "load_before": load_average(),
    }
    with tempfile.TemporaryDirectory(prefix="muxbench-") as tmp:
        work = Path(tmp)
        fake, fake_port = await start_fake(work, polls=args.polls)
        try:
            if 1 in only:
                print("1. OpenAI-compatible images, direct vs gateway vs the peers", flush=True)
                async with gateway_in(work / "s1", fake_port) as (gateway, port), \
                        gateway_in(work / "s1-workers", fake_port,
                                   scenarios.WORKERS) as (_, workers_port):
                    out["gateway_runtime"] = loaded_modules(gateway)
                    targets = scenarios.gateway_targets(port, fake_port, workers_port)
                    async with peer(out["portkey"], args.no_portkey, "--no-portkey",
                                    start_portkey(work), portkey_version) as portkey:
                        if portkey is not None:
                            targets.update(scenarios.portkey_target(portkey, fake_port))
                        out["s1"] = await scenarios.openai_path(targets, scale)
                # LiteLLM starts only now: it works for a while after it comes up,
                # which would take CPU from the paths measured before it.
                async with peer(out["litellm"], args.no_litellm, "--no-litellm",
                                start_litellm(work, fake_port), litellm_version) as litellm:
                    if litellm is not None:
                        out["s1"].update(await scenarios.openai_path(
                            scenarios.litellm_target(litellm), scale))
            if 2 in only:
                print(f"2. Native task API, concurrency 64, {scenarios.WORKERS} workers",
                      flush=True)
                async with gateway_in(work / "s2", fake_port,
                                      scenarios.WORKERS) as (gateway, port):
                    out["s2"] = await scenarios.native_rates(
                        port, gateway, work / "s2" / "data" / "muxproxy.db", scale)
            if 3 in only:
                print(f"3. {scale.jobs} async jobs with callbacks", flush=True)
                receiver = scenarios.Receiver()
                await receiver.start()
                try:
                    async with gateway_in(work / "s3", fake_port) as (gateway, port):
                        out["s3"] = await scenarios.callbacks(port, gateway, receiver,
                                                              scale.jobs)
                finally:
                    await receiver.stop()
                out["s3"]["fal_polls"] = args.polls
            if 4 in only:
                print("4. Table size", flush=True)
                out["s4"] = await scenarios.table_sizes(work, fake_port, scale)
            if 5 in only:
                print("5. One worker against two, on PostgreSQL and on SQLite", flush=True)
                out["s5"] = await pg_workers(work, fake_port, scale)
            if 8 in only:
                print("8. OpenAI-compatible images, local folder vs S3 bucket (moto)",
                      flush=True)
                out["s8"] = await storage.storage_paths(work, fake_port, scale)
            if 7 in only:
                print("7. Image streaming: first and completed events vs unstreamed", flush=True)
                async with gateway_in(work / "s7", fake_port) as (_, port):
                    out["s7"] = await streaming.streaming(port)
            if 6 in only:
                print("6. Three replicas on PostgreSQL, one killed under load", flush=True)
                (work / "s6").mkdir()
                out["s6"] = await replicas.replica_failover(work / "s6", fake_port)
        finally:
            fake.stop()
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short pass (rough figures)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--no-portkey", action="store_true", help="leave Portkey out")
    parser.add_argument("--only", help="comma-separated scenario numbers (1-8) or names "
                        f"({', '.join(NAMES)})")
    parser.add_argument("--polls", type=int, default=2,
                        help="status polls before the fake fal queue completes (default 2)")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    started = time.perf_counter()
    out = runner(main(args))
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["load_after"] = load_average()
    print()
    print(report.table(out))
    RESULTS.mkdir(exist_ok=True)
    stamp = out["date"].replace(":", "").replace("-", "")[:15]
    path = RESULTS / f"bench-{stamp}.json"
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    (RESULTS / "latest.json").write_text(path.read_text())
    print(f"\nwritten {path.relative_to(ROOT)} (and latest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(run())
