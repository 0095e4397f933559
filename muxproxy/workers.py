"""``muxproxy serve --workers N``: N gateway processes on one host and one port.

A small supervisor binds the listening socket once and starts N workers, each a
``muxproxy serve`` of its own (its own app, store pool, scheduler and lease owner),
handed that socket by descriptor: the kernel gives each new connection to whichever
worker accepts it first. Workers run in their own process group, so a terminal's
Ctrl-C reaches the supervisor only, which passes one SIGTERM on: every worker then
drains as a single process does (``server.graceful_shutdown_seconds``). A worker
that dies is logged and started again; one that fails to start (its settings,
its database) stops them all, since every restart would fail the same way.

Each worker also holds the read end of a pipe whose write end only the supervisor
has: if the supervisor itself is killed, the pipe ends and the workers stop
instead of serving on as orphans.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Sequence

from uvicorn.config import STARTUP_FAILURE

from muxproxy.logs import get_logger

log = get_logger("muxproxy.workers")

# A worker that died is started again after this long, doubled for each death in a
# row (up to the cap), so a worker that keeps crashing does not spin.
RESTART_SECONDS = 0.5
RESTART_CAP_SECONDS = 10.0
# Past the grace period, a worker still running is killed.
KILL_MARGIN_SECONDS = 5.0


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Runs ``count`` workers, each ``worker_argv`` plus the descriptors it is given."""

    def __init__(self, worker_argv: Sequence[str], sock: socket.socket, count: int,
                 grace_seconds: float) -> None:
        self.worker_argv = list(worker_argv)
        self.sock = sock
        self.count = count
        self.grace_seconds = grace_seconds
        self._stop = asyncio.Event()
        self._lifeline = os.pipe()  # (read end for the workers, write end kept here)
        self._failed = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        host, port = self.sock.getsockname()[:2]
        log.info("supervisor serving", workers=self.count, host=host, port=port,
                 pid=os.getpid())
        slots = [asyncio.create_task(self._keep(index)) for index in range(self.count)]
        await asyncio.gather(*slots)
        for fd in self._lifeline:
            os.close(fd)
        return STARTUP_FAILURE if self._failed else 0

    async def _start(self, index: int) -> asyncio.subprocess.Process:
        listen_fd, lifeline = self.sock.fileno(), self._lifeline[0]
        proc = await asyncio.create_subprocess_exec(
            *self.worker_argv, "--listen-fd", str(listen_fd), "--lifeline-fd", str(lifeline),
            pass_fds=(listen_fd, lifeline), process_group=0)
        log.info("worker started", worker=index, pid=proc.pid)
        return proc

    async def _keep(self, index: int) -> None:
        """Keep worker ``index`` running until the stop; then stop it."""
        loop = asyncio.get_running_loop()
        delay = RESTART_SECONDS
        while not self._stop.is_set():
            started = loop.time()
            proc = await self._start(index)
            ended = asyncio.ensure_future(proc.wait())
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait((ended, stop), return_when=asyncio.FIRST_COMPLETED)
            if not ended.done():
                stop.cancel()
                await self._terminate(index, proc)
                return
            stop.cancel()
            code = proc.returncode
            if code == STARTUP_FAILURE:
                log.error("worker could not start; stopping every worker", worker=index,
                          pid=proc.pid)
                self._failed = True
                self._stop.set()
                return
            if self._stop.is_set():
                return
            if loop.time() - started > 2 * RESTART_CAP_SECONDS:
                delay = RESTART_SECONDS  # it had been running well: no backoff
            log.error("worker died; starting another", worker=index, pid=proc.pid,
                      exit_code=code, restart_in_seconds=delay)
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
                return
            except TimeoutError:
                delay = min(delay * 2, RESTART_CAP_SECONDS)

    async def _terminate(self, index: int, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.grace_seconds + KILL_MARGIN_SECONDS):
                code = await proc.wait()
        except TimeoutError:
            log.error("worker did not stop in time; killing it", worker=index, pid=proc.pid)
            proc.kill()
            code = await proc.wait()
        log.info("worker stopped", worker=index, pid=proc.pid, exit_code=code)


def supervise(worker_argv: Sequence[str], host: str, port: int, count: int,
              grace_seconds: float) -> int:
    """Bind ``host:port``, run ``count`` workers until SIGTERM or SIGINT; the exit code."""
    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        print(f"muxproxy: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    with sock:
        return asyncio.run(Supervisor(worker_argv, sock, count, grace_seconds).run())
