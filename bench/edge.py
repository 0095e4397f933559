"""Figures for the HTTP edge's bounds: one 200 MB request header (the answer, how
long it took, the gateway's memory growth) and ``/healthz`` latency while 1,100
half-sent requests are held open. ``python bench/edge.py [--header-mb N]``

Starts the gateway as its own process on the shipped defaults (in a temp folder),
with the soft open-file limit a shell or systemd usually gives (1024), and drives
it from this process over loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.edge import get, half_sent, huge_header, raise_own_open_files  # noqa: E402
from tests.support.process import GatewayProcess, free_port  # noqa: E402
from tests.support.procstats import memory_kib  # noqa: E402

HALF_SENT = 1100
DEFAULT_OPEN_FILES = 1024


async def header_figures(gateway: GatewayProcess, megabytes: int, timeout: float) -> None:
    rss_before, _ = memory_kib(gateway.pid)
    try:
        async with asyncio.timeout(timeout):
            answer, sent = await huge_header(gateway.port, megabytes * 1024 * 1024)
        outcome = f"status {answer.status} after {answer.seconds:.2f} s"
    except TimeoutError:
        sent, outcome = megabytes * 1024 * 1024, f"no answer within {timeout:.0f} s"
    rss_after, peak = memory_kib(gateway.pid)
    print(f"{megabytes} MB header: {outcome}, {sent / 2**20:.1f} MiB sent; gateway RSS "
          f"{rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB "
          f"(+{(rss_after - rss_before) / 1024:.1f}), peak {peak / 1024:.0f} MiB")


async def healthz_figures(gateway: GatewayProcess, rounds: int = 5) -> None:
    raise_own_open_files(HALF_SENT + 200)
    async with half_sent(gateway.port, HALF_SENT):
        answers = [await get(gateway.port, "/healthz", timeout=20.0) for _ in range(rounds)]
    seconds = [a.seconds for a in answers]
    print(f"/healthz with {HALF_SENT} half-sent requests held: statuses "
          f"{[a.status for a in answers]}, median {statistics.median(seconds) * 1000:.0f} ms, "
          f"max {max(seconds) * 1000:.0f} ms over {rounds} tries")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--header-mb", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="give up on the header's answer after this many seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text((ROOT / "config.toml").read_text().replace(
            'level = "${MUXPROXY_LOG_LEVEL:-info}"', 'level = "warning"'))
        gateway = GatewayProcess(config, free_port(), open_files=DEFAULT_OPEN_FILES)
        await gateway.start()
        try:
            await header_figures(gateway, args.header_mb, args.timeout)
            await healthz_figures(gateway)
        finally:
            await gateway.kill()


if __name__ == "__main__":
    asyncio.run(main())
