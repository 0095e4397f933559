"""The blob storage contract: every backend passes it (a local folder, the cache of
recent blobs over it; an object store next). A backend is added to ``BACKENDS``
with a factory and whether it hands out URLs of its own."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from muxproxy.storage import BlobNotFound, BlobStorage, RecentCache
from muxproxy.storage.base import CHUNK_BYTES, HEALTH_KEY
from muxproxy.storage.local import LocalStorage

KEY = "results/20261123/job-0.png"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@dataclass(frozen=True)
class Backend:
    make: Callable[[Path], BlobStorage]
    presigns: bool  # url_for gives a URL that serves the blob


BACKENDS = {
    "local": Backend(lambda root: LocalStorage(root), presigns=False),
    "recent-cache-over-local": Backend(lambda root: RecentCache(LocalStorage(root)),
                                       presigns=False),
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
async def storage(backend: Backend, tmp_path: Path) -> AsyncIterator[BlobStorage]:
    opened = backend.make(tmp_path / "blobs")
    yield opened
    await opened.aclose()


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at:at + size]


async def read_all(storage: BlobStorage, key: str, start: int = 0,
                   end: int | None = None) -> list[bytes]:
    return [chunk async for chunk in storage.open_read(key, start, end)]


async def test_put_get_exists_delete(storage: BlobStorage) -> None:
    assert not await storage.exists(KEY)
    await storage.put(KEY, PNG, "image/png")
    assert await storage.exists(KEY)
    assert await storage.get(KEY) == PNG
    info = await storage.stat(KEY)
    assert (info.size, info.content_type) == (len(PNG), "image/png")
    await storage.delete(KEY)
    assert not await storage.exists(KEY)
    with pytest.raises(BlobNotFound):
        await storage.get(KEY)
    await storage.delete(KEY)  # absent: nothing happens


async def test_a_multi_chunk_blob_streams_in_and_out(storage: BlobStorage) -> None:
    data = os.urandom(CHUNK_BYTES * 3 + 12345)
    await storage.put_stream("inputs/20261123/job-image0.webp", chunks_of(data, 10_000),
                             "image/webp")
    chunks = await read_all(storage, "inputs/20261123/job-image0.webp")
    assert b"".join(chunks) == data
    assert len(chunks) > 1 and all(0 < len(chunk) <= CHUNK_BYTES for chunk in chunks)
    info = await storage.stat("inputs/20261123/job-image0.webp")
    assert (info.size, info.content_type) == (len(data), "image/webp")
    assert await storage.get("inputs/20261123/job-image0.webp") == data


async def test_a_range_is_read_alone(storage: BlobStorage) -> None:
    data = os.urandom(CHUNK_BYTES * 2 + 7)
    await storage.put(KEY, data, "image/png")
    assert b"".join(await read_all(storage, KEY, 10, 20)) == data[10:20]
    assert b"".join(await read_all(storage, KEY, CHUNK_BYTES - 1)) == data[CHUNK_BYTES - 1:]
    assert b"".join(await read_all(storage, KEY, 5, len(data) + 100)) == data[5:]
    assert await read_all(storage, KEY, len(data)) == []


async def test_a_missing_blob(storage: BlobStorage) -> None:
    assert not await storage.exists(KEY)
    with pytest.raises(BlobNotFound):
        await storage.get(KEY)
    with pytest.raises(BlobNotFound):
        await storage.stat(KEY)
    stream = storage.open_read(KEY)  # nothing is asked of the backend yet
    with pytest.raises(BlobNotFound):
        await anext(stream)
    await storage.delete(KEY)


async def test_a_folder_is_no_blob(storage: BlobStorage) -> None:
    await storage.put(KEY, PNG, "image/png")
    folder = KEY.rsplit("/", 1)[0]
    assert not await storage.exists(folder)
    with pytest.raises(BlobNotFound):
        await storage.get(folder)
    with pytest.raises(BlobNotFound):
        await storage.stat(folder)
    with pytest.raises(BlobNotFound):
        await read_all(storage, folder)


async def test_a_failed_stream_leaves_no_blob(storage: BlobStorage) -> None:
    async def cut_off() -> AsyncIterator[bytes]:
        yield b"\x89PNG\r\n\x1a\n"
        yield b"x" * CHUNK_BYTES
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await storage.put_stream(KEY, cut_off(), "image/png")
    assert not await storage.exists(KEY)
    with pytest.raises(BlobNotFound):
        await storage.get(KEY)
    await storage.put(KEY, PNG, "image/png")  # the key is still free to write
    assert await storage.get(KEY) == PNG


@pytest.mark.parametrize("key", ["../secret.txt", "results/../../secret.txt", "/etc/passwd",
                                 "results//x.png", "results/./x.png", "results\\..\\x",
                                 "", "results/x.png/.."])
async def test_keys_that_would_leave_the_root_are_refused(storage: BlobStorage, tmp_path: Path,
                                                          key: str) -> None:
    (tmp_path / "secret.txt").write_bytes(b"secret")
    with pytest.raises(BlobNotFound):
        await storage.put(key, PNG, "image/png")
    with pytest.raises(BlobNotFound):
        await storage.put_stream(key, chunks_of(PNG, 100), "image/png")
    with pytest.raises(BlobNotFound):
        await storage.get(key)
    with pytest.raises(BlobNotFound):
        await storage.stat(key)
    with pytest.raises(BlobNotFound):
        await read_all(storage, key)
    with pytest.raises(BlobNotFound):
        await storage.url_for(key, 60)
    with pytest.raises(BlobNotFound):
        await storage.delete(key)
    assert not await storage.exists(key)
    assert (tmp_path / "secret.txt").read_bytes() == b"secret"
    assert sorted(os.listdir(tmp_path)) == ["blobs", "secret.txt"]


async def test_url_for(storage: BlobStorage, backend: Backend) -> None:
    await storage.put(KEY, PNG, "image/png")
    url = await storage.url_for(KEY, 60)
    if not backend.presigns:
        assert url is None  # downloads go through the gateway
        return
    assert url is not None
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200 and await resp.read() == PNG


async def test_check_probes_and_leaves_nothing(storage: BlobStorage) -> None:
    await storage.check()
    await storage.check()
    assert not await storage.exists(HEALTH_KEY)
