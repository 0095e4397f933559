"""RecentCache: the blobs written last are read back from memory, while the
backend under it stays the truth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from muxproxy.storage import BlobNotFound, RecentCache
from muxproxy.storage.local import LocalStorage

KEY = "results/20261123/job-0.png"
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 200


def behind_its_back(root: Path, key: str, data: bytes) -> None:
    """Change a blob in the backend without the cache knowing."""
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    (root / key).write_bytes(data)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_blob_just_written_is_read_back_from_memory(tmp_path: Path) -> None:
    cache = RecentCache(LocalStorage(tmp_path))
    await cache.put(KEY, PNG, "image/png")
    behind_its_back(tmp_path, KEY, b"other bytes")
    assert await cache.get(KEY) == PNG
    await cache.put_stream("results/20261123/job-1.png", chunks(PNG[:10], PNG[10:]),
                           "image/png")
    behind_its_back(tmp_path, "results/20261123/job-1.png", b"other bytes")
    assert await cache.get("results/20261123/job-1.png") == PNG


async def test_a_blob_gone_from_the_backend_is_gone_from_the_cache(tmp_path: Path) -> None:
    cache = RecentCache(LocalStorage(tmp_path))
    await cache.put(KEY, PNG, "image/png")
    (tmp_path / KEY).unlink()
    with pytest.raises(BlobNotFound):
        await cache.get(KEY)
    assert not await cache.exists(KEY)


async def test_deleting_forgets_the_copy(tmp_path: Path) -> None:
    cache = RecentCache(LocalStorage(tmp_path))
    await cache.put(KEY, PNG, "image/png")
    await cache.delete(KEY)
    behind_its_back(tmp_path, KEY, b"written since by another replica")
    assert await cache.get(KEY) == b"written since by another replica"


async def test_the_oldest_go_first_and_big_blobs_are_not_kept(tmp_path: Path) -> None:
    cache = RecentCache(LocalStorage(tmp_path), limit_bytes=4000)
    keys = [f"results/20261123/job{i}-0.png" for i in range(5)]
    for key in keys:
        await cache.put(key, PNG[:900], "image/png")  # 4500 bytes in all
        behind_its_back(tmp_path, key, b"changed")
    assert await cache.get(keys[0]) == b"changed"  # pushed out
    assert [await cache.get(key) for key in keys[1:]] == [PNG[:900]] * 4
    big = "results/20261123/big-0.png"
    await cache.put(big, b"x" * 1001, "image/png")  # over a quarter of the limit
    await cache.put_stream("results/20261123/big-1.png", chunks(b"x" * 600, b"x" * 600),
                           "image/png")
    for key in (big, "results/20261123/big-1.png"):
        behind_its_back(tmp_path, key, b"changed")
        assert await cache.get(key) == b"changed"
    assert await cache.get(keys[1]) == PNG[:900]  # big blobs pushed nothing out


async def test_the_readiness_probe_reaches_the_backend(tmp_path: Path) -> None:
    cache = RecentCache(LocalStorage(tmp_path))
    await cache.check()
    (tmp_path / "health").rmdir()
    (tmp_path / "health").write_bytes(b"a file where the probe's folder goes")
    with pytest.raises(NotADirectoryError):
        await cache.check()
