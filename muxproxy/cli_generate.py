"""``muxproxy generate "PROMPT"``: a client of a running gateway that submits a job,
follows it, downloads the images and prints their paths.

It speaks the native task API (docs/native-api.md) over aiohttp: a submit answers at
once with the job id (which ``--async`` prints), a poll names the state and the
provider serving the job (for the live line), results come as signed links to
download, errors as ``{"code", "msg"}`` with the gateway's message, and reference
images travel as base64 in one JSON body. Exit codes: 0 done, 1 the job failed, 2 a
usage error, a refused request or an unreachable gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from muxproxy import __version__
from muxproxy.cli_client import GatewayAddress, NoGateway, add_gateway_options, locate

DONE, FAILED, USAGE = 0, 1, 2
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp",
               "image/gif": ".gif"}
_SPINNER = "|/-\\"


class Refused(Exception):
    """The gateway refused a request or could not be reached: exit code 2."""


def add_parser(commands: Any) -> None:
    gen = commands.add_parser("generate", help="generate images with a running gateway",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("prompt", help="what the image should show")
    gen.add_argument("--model", help="model id (default: the gateway's first model)")
    gen.add_argument("-n", type=int, default=None, help="how many images")
    gen.add_argument("--size", help="WIDTHxHEIGHT, e.g. 1024x1024")
    gen.add_argument("--aspect-ratio", help="e.g. 16:9")
    gen.add_argument("--resolution", help="1k, 2k or 4k")
    gen.add_argument("--quality", help="auto, low, medium or high")
    gen.add_argument("--edit", action="append", default=[], metavar="IMAGE",
                     help="a reference image (a file or an http(s) URL); repeat for more")
    gen.add_argument("--mask", metavar="IMAGE", help="a mask for the first --edit image")
    gen.add_argument("--out", help="file to write (image N of several gets -N before the "
                                   "extension); default: <job id>-N.<ext> here")
    gen.add_argument("--async", dest="detach", action="store_true",
                     help="print the job id and exit without waiting")
    gen.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    gen.add_argument("--timeout", type=float, default=900.0,
                     help="seconds to wait for the job (default 900)")
    add_gateway_options(gen)


def run(args: argparse.Namespace) -> int:
    try:
        gateway = locate(args)
        body = _body(args)
    except (NoGateway, Refused) as exc:
        print(f"muxproxy generate: {exc}", file=sys.stderr)
        return USAGE
    try:
        return asyncio.run(_generate(gateway, body, args))
    except Refused as exc:
        print(f"muxproxy generate: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": args.prompt}
    for name in ("model", "n", "size", "aspect_ratio", "resolution", "quality"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    urls = [item for item in args.edit if item.startswith(("http://", "https://"))]
    files = [_read(item) for item in args.edit if item not in urls]
    if urls:
        body["image_urls"] = urls
    if files:
        body["image_base64"] = files
    if args.mask is not None:
        if not args.edit:
            raise Refused("--mask needs an --edit image to apply to")
        body["mask"] = args.mask if args.mask.startswith(("http://", "https://")) \
            else _read(args.mask)
    return body


def _read(path: str) -> str:
    try:
        return base64.b64encode(Path(path).read_bytes()).decode()
    except OSError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror}") from None


async def _generate(gateway: GatewayAddress, body: dict[str, Any],
                    args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {gateway.api_key}",
               "User-Agent": f"muxproxy-cli/{__version__}"}
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=120)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        api = f"{gateway.url}/api/v1/images/generations"
        created = await _call(http, "POST", api, json=body)
        job_id = str(created["taskId"])
        if args.detach:
            print(json.dumps({"id": job_id, "state": created["state"]}) if args.json
                  else job_id)
            return DONE
        task = await _follow(http, api, job_id, args.timeout, Status(sys.stderr))
        if task["state"] == "failed":
            message = f"generation {job_id} failed: {task.get('failMsg')}"
            if args.json:
                print(json.dumps({"id": job_id, "state": "failed", "error": task.get("failMsg"),
                                  "code": task.get("failCode")}))
            print(f"muxproxy generate: {message}", file=sys.stderr)
            return FAILED
        if task["state"] != "completed":
            print(f"muxproxy generate: generation {job_id} is still {task['state']} after "
                  f"{args.timeout:g} s; fetch it later by its id", file=sys.stderr)
            return FAILED
        urls = list(task.get("resultUrls") or [])
        # Signed links need no key: none is sent with them.
        async with aiohttp.ClientSession(timeout=timeout) as files:
            paths = [await _download(files, url, _target(args.out, job_id, i, len(urls)))
                     for i, url in enumerate(urls)]
        if args.json:
            print(json.dumps({"id": job_id, "state": "completed", "model": task.get("model"),
                              "files": [str(p) for p in paths], "urls": urls}))
        else:
            for path in paths:
                print(path)
        return DONE


async def _call(http: aiohttp.ClientSession, method: str, url: str,
                **kwargs: Any) -> dict[str, Any]:
    try:
        async with http.request(method, url, **kwargs) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Refused(f"cannot reach the gateway at {url.split('/api/')[0]}: "
                      f"{exc or type(exc).__name__}") from None
    try:
        answer = json.loads(text)
    except ValueError:
        raise Refused(f"the gateway answered HTTP {resp.status} with no JSON; is "
                      f"{url.split('/api/')[0]} a muxproxy gateway?") from None
    if resp.status != 200 or not isinstance(answer, dict) or answer.get("code") != 200:
        message = answer.get("msg") if isinstance(answer, dict) else None
        raise Refused(f"the gateway refused the request (HTTP {resp.status}): {message}")
    data: dict[str, Any] = answer["data"]
    return data


async def _follow(http: aiohttp.ClientSession, api: str, job_id: str, limit: float,
                  status: Status) -> dict[str, Any]:
    started = time.monotonic()
    delay = 0.2
    while True:
        task = await _call(http, "GET", api, params={"task_id": job_id})
        status.show(task, time.monotonic() - started)
        if task["state"] in ("completed", "failed") or time.monotonic() - started > limit:
            status.end()
            return task
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def _target(out: str | None, job_id: str, index: int, count: int) -> Path:
    if out is None:
        return Path(f"{job_id}-{index + 1}")
    path = Path(out)
    return path if count == 1 else path.with_name(f"{path.stem}-{index + 1}{path.suffix}")


async def _download(http: aiohttp.ClientSession, url: str, path: Path) -> Path:
    try:
        async with http.get(url) as resp:
            if resp.status != 200:
                raise Refused(f"downloading {url} failed: HTTP {resp.status}")
            data = await resp.read()
            content_type = resp.content_type
    except aiohttp.ClientError as exc:
        raise Refused(f"downloading {url} failed: {exc}") from None
    if not path.suffix:
        path = path.with_name(path.name + _EXTENSIONS.get(content_type, ".img"))
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise Refused(f"cannot write {path}: {exc.strerror}") from None
    return path


class Status:
    """The job's state as it moves: one line redrawn in place on a terminal (state,
    elapsed time, provider), a plain line per change of state otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.last: str | None = None
        self.frames = 0

    def show(self, task: dict[str, Any], elapsed: float) -> None:
        state, provider = task["state"], task.get("model", "?")
        if self.live:
            ended = state in ("completed", "failed")
            spin = "*" if ended else _SPINNER[self.frames % len(_SPINNER)]
            self.frames += 1
            self.stream.write(f"\r{spin} {task['taskId']}  {state:<10} {elapsed:6.1f} s  "
                              f"{provider}\x1b[K")
            self.stream.flush()
        elif state != self.last:
            self.stream.write(f"{task['taskId']} {state} {elapsed:.1f}s {provider}\n")
            self.stream.flush()
        self.last = state

    def end(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
