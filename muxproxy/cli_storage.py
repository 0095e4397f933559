"""``muxproxy copy-storage --from URL --to URL [--delete-source]``: copy every stored
image from one storage to another (a folder to a bucket, a bucket to another), so
that ``storage.url`` can then name the new one.

Keys are copied as they are, relative to each storage's root or prefix. Links the
gateway handed out name a key (``/files/<signed key>/...``), and jobs keep theirs,
so once ``storage.url`` names the new storage every earlier link and ``/image``
address serves from it. Both URLs use the config's ``[storage.s3]`` options.

A blob already at the destination with the same size is left alone, so the command
can run again (after the switch, say, for the images written meanwhile). With
``--delete-source`` each blob is deleted from the source once its copy is in place:
a move. Exit status 1 when a blob failed (it is named on stderr), 2 for bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, replace

from muxproxy.settings import Settings, SettingsError
from muxproxy.storage import BlobNotFound, BlobStorage, check_storage_url, storage_backend

# Blobs copied at once: enough to hide a bucket's latency, few enough for a disk.
PARALLEL = 8


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "copy-storage", help="copy (or move) every stored image to another storage")
    parser.add_argument("--config", default=None,
                        help="config file for [storage.s3] (default: $MUXPROXY_CONFIG or "
                             "./config.toml)")
    parser.add_argument("--from", dest="source", required=True, metavar="URL",
                        help="file://folder or s3://bucket/prefix to copy from")
    parser.add_argument("--to", dest="target", required=True, metavar="URL",
                        help="file://folder or s3://bucket/prefix to copy to")
    parser.add_argument("--delete-source", action="store_true",
                        help="delete each blob from the source once copied (a move)")


@dataclass
class Tally:
    copied: int = 0
    present: int = 0
    deleted: int = 0
    failed: int = 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.source.rstrip("/") == args.target.rstrip("/"):
            raise SettingsError("--from and --to name the same storage")
        for url in (args.source, args.target):
            check_storage_url(url, settings.storage)
    except SettingsError as exc:
        print(f"muxproxy: copy-storage: {exc}", file=sys.stderr)
        return 2
    tally = asyncio.run(_copy_all(settings, args.source, args.target, args.delete_source))
    print(f"copied {tally.copied}, already there {tally.present}, deleted from the source "
          f"{tally.deleted}, failed {tally.failed}")
    return 1 if tally.failed else 0


def _open(settings: Settings, url: str) -> BlobStorage:
    # No cache of recent blobs: each is read once.
    return storage_backend(url).from_url(url, replace(settings.storage, url=url))


async def _copy_all(settings: Settings, source_url: str, target_url: str,
                    delete: bool) -> Tally:
    source, target = _open(settings, source_url), _open(settings, target_url)
    tally = Tally()
    try:
        await source.open()
        await target.open()
        slots = asyncio.Semaphore(PARALLEL)
        tasks: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()

        async for key in source.list_keys():
            await slots.acquire()
            task = asyncio.create_task(_copy_one(source, target, key, delete, tally))
            tasks.add(task)
            task.add_done_callback(finished)
        await asyncio.gather(*tasks)
    except OSError as exc:
        print(f"muxproxy: copy-storage: cannot list {source_url}: {exc}", file=sys.stderr)
        tally.failed += 1
    finally:
        await source.aclose()
        await target.aclose()
    return tally


async def _copy_one(source: BlobStorage, target: BlobStorage, key: str, delete: bool,
                    tally: Tally) -> None:
    try:
        info = await source.stat(key)
        try:
            there = (await target.stat(key)).size == info.size
        except BlobNotFound:
            there = False
        if there:
            tally.present += 1
        else:
            await target.put_stream(key, source.open_read(key), info.content_type)
            if (await target.stat(key)).size != info.size:
                raise OSError("the copy's size differs from the source's")
            tally.copied += 1
        if delete:
            await source.delete(key)
            tally.deleted += 1
    except BlobNotFound:
        pass  # gone since it was listed (the retention sweep): nothing to copy
    except OSError as exc:
        tally.failed += 1
        print(f"muxproxy: copy-storage: {key}: {exc}", file=sys.stderr)
