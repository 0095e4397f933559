"""LocalStorage: blobs in a folder, one file each, folders made once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from muxproxy.storage import BlobNotFound, blob_key
from muxproxy.storage.local import INLINE_BYTES, LocalStorage

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100


def test_keys_group_blobs_by_the_day_the_job_was_created() -> None:
    created = int(datetime(2026, 11, 23, 0, 0, 1, tzinfo=UTC).timestamp() * 1000)
    assert blob_key("results", "abc_-1", created, "0", "png") == "results/20261123/abc_-1-0.png"
    assert blob_key("inputs", "j", created - 2000, "mask", "webp") == \
        "inputs/20261122/j-mask.webp"


async def test_a_blob_is_one_file_under_its_key(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    await storage.put("results/20261123/j-0.png", PNG, "image/png")
    await storage.put("results/20261123/k-0.png", PNG[::-1], "image/png")
    assert (tmp_path / "results" / "20261123" / "j-0.png").read_bytes() == PNG
    assert sorted(os.listdir(tmp_path / "results" / "20261123")) == ["j-0.png", "k-0.png"]
    assert await storage.get("results/20261123/k-0.png") == PNG[::-1]


async def test_a_small_blob_is_written_without_a_thread_hop(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    small, large = os.urandom(INLINE_BYTES), os.urandom(INLINE_BYTES + 1)
    # A small put finishes in its first step: it never suspends on a worker thread.
    step = storage.put("results/20261123/s-0.png", small, "image/png")
    with pytest.raises(StopIteration):
        step.send(None)
    await storage.put("results/20261123/l-0.png", large, "image/png")
    assert (tmp_path / "results" / "20261123" / "s-0.png").read_bytes() == small
    assert await storage.get("results/20261123/l-0.png") == large


async def test_keys_of_the_older_layout_still_read_and_write(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    await storage.put("results/oldjob/0.png", PNG, "image/png")
    assert await LocalStorage(tmp_path).get("results/oldjob/0.png") == PNG


async def test_a_folder_removed_since_it_was_made_is_made_again(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    await storage.put("inputs/20261123/j-image0.png", PNG, "image/png")
    await storage.delete("inputs/20261123/j-image0.png")
    assert not (tmp_path / "inputs" / "20261123").exists()  # left empty, so pruned
    await storage.put("inputs/20261123/k-image0.png", PNG, "image/png")
    assert await storage.get("inputs/20261123/k-image0.png") == PNG


async def test_a_write_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (root / "results" / "20261123").mkdir(parents=True)
    victim = outside / "victim.png"
    victim.write_bytes(b"untouched")
    os.symlink(victim, root / "results" / "20261123" / "j-0.png")
    os.symlink(outside, root / "results" / "linked")
    storage = LocalStorage(root)
    with pytest.raises(OSError, match="many levels of symbolic links"):
        await storage.put("results/20261123/j-0.png", PNG, "image/png")
    with pytest.raises(BlobNotFound):
        await storage.put("results/linked/j-0.png", PNG, "image/png")
    assert victim.read_bytes() == b"untouched"
    assert os.listdir(outside) == ["victim.png"]


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_read_stopped_early_closes_its_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    await storage.put("results/20261123/j-0.png", PNG * 500, "image/png")
    before = open_files()
    stream = storage.open_read("results/20261123/j-0.png")
    assert open_files() == before  # nothing opened before the first chunk
    first = await anext(stream)
    assert first == (PNG * 500)[:len(first)] and open_files() == before + 1
    await stream.aclose()
    assert open_files() == before


async def test_a_cancelled_streamed_write_leaves_no_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    written, never = asyncio.Event(), asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield PNG
        written.set()
        await never.wait()
        yield PNG

    before = open_files()
    task = asyncio.create_task(storage.put_stream("inputs/20261123/j-image0.png", stalls(),
                                                  "image/png"))
    await written.wait()
    assert (tmp_path / "inputs" / "20261123" / "j-image0.png").exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (tmp_path / "inputs" / "20261123" / "j-image0.png").exists()
    assert open_files() == before


async def test_reads_do_not_follow_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(PNG)
    (root / "results" / "evil").mkdir(parents=True)
    os.symlink(outside / "secret.png", root / "results" / "evil" / "0.png")
    storage = LocalStorage(root)
    assert not await storage.exists("results/evil/0.png")
    with pytest.raises(BlobNotFound):
        await storage.stat("results/evil/0.png")
    with pytest.raises(BlobNotFound):
        await anext(storage.open_read("results/evil/0.png"))
    with pytest.raises(BlobNotFound):
        storage.local_path("results/evil/0.png")


async def test_check_fails_when_the_probe_cannot_be_written(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    await storage.check()
    (tmp_path / "health").rmdir()
    (tmp_path / "health").write_bytes(b"a file where the probe's folder goes")
    with pytest.raises(NotADirectoryError):
        await storage.check()
