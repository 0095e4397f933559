"""A process's memory and descriptors, read from /proc (Linux), and its event loop's
task count from the gateway's own metrics."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Usage:
    rss_kib: int
    peak_rss_kib: int
    fds: int
    tasks: int
    cpu_seconds: float = 0.0

    def __str__(self) -> str:
        return (f"RSS {self.rss_kib / 1024:.1f} MiB (peak {self.peak_rss_kib / 1024:.1f} MiB), "
                f"{self.fds} fds, {self.tasks} asyncio tasks, {self.cpu_seconds:.1f} s CPU")


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM): resident memory now and at its peak, in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    """User plus system time the process has used."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def loop_tasks(url: str) -> int:
    """The gateway's ``muxproxy_event_loop_tasks`` gauge (the /metrics request that
    reads it counts itself, the same each time)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http, \
            http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    match = re.search(r"^muxproxy_event_loop_tasks (\S+)$", text, re.M)
    assert match is not None, "the gateway exports no muxproxy_event_loop_tasks"
    return int(float(match.group(1)))


async def usage(pid: int, url: str) -> Usage:
    tasks = await loop_tasks(url)
    rss, peak = memory_kib(pid)
    return Usage(rss_kib=rss, peak_rss_kib=peak, fds=open_fds(pid), tasks=tasks,
                 cpu_seconds=cpu_seconds(pid))
