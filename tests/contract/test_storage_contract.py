"""The blob storage contract: every backend passes it (a local folder, an S3 bucket
on a real S3-compatible server started by the fixture, and the cache of recent blobs
over each). A backend is added to ``BACKENDS`` with a factory and whether it hands
out URLs of its own."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from muxproxy.settings import S3Settings
from muxproxy.storage import BlobNotFound, BlobStorage, RecentCache
from muxproxy.storage.base import CHUNK_BYTES
from muxproxy.storage.local import LocalStorage
from muxproxy.storage.s3 import PART_BYTES, S3Storage
from tests.support.s3 import Bucket, list_objects, new_bucket, shared_session

KEY = "results/20261123/job-0.png"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@dataclass(frozen=True)
class Place:
    folder: Path
    bucket: Bucket | None  # the test's own bucket, for the S3 backends


def _s3(place: Place, prefix: str) -> S3Storage:
    assert place.bucket is not None
    settings = S3Settings(**place.bucket.s3_settings())
    return S3Storage(place.bucket.name, prefix, settings, shared_session())


@dataclass(frozen=True)
class Backend:
    make: Callable[[Place], BlobStorage]
    presigns: bool  # url_for gives a URL that serves the blob
    s3: bool = False  # needs a bucket


BACKENDS = {
    "local": Backend(lambda place: LocalStorage(place.folder), presigns=False),
    "recent-cache-over-local": Backend(lambda place: RecentCache(LocalStorage(place.folder)),
                                       presigns=False),
    "s3": Backend(lambda place: _s3(place, "some/prefix/"), presigns=True, s3=True),
    "recent-cache-over-s3-bucket-root": Backend(lambda place: RecentCache(_s3(place, "")),
                                                presigns=True, s3=True),
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
async def storage(backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
                  ) -> AsyncIterator[BlobStorage]:
    # Only the S3 backends start (or need) the S3 server.
    bucket = await new_bucket(request.getfixturevalue("s3_server")) if backend.s3 else None
    opened = backend.make(Place(tmp_path / "blobs", bucket))
    await opened.open()
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
    assert set(os.listdir(tmp_path)) <= {"blobs", "secret.txt"}
    assert [k async for k in storage.list_keys()] == []


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
    await asyncio.gather(storage.check(), storage.check())  # two replicas on one bucket
    assert [key async for key in storage.list_keys()] == []


async def test_list_keys_names_every_blob(storage: BlobStorage) -> None:
    keys = {KEY, "results/20261124/other-0.webp", "inputs/20261124/job-image0.png"}
    for key in keys:
        await storage.put(key, PNG, "image/png")
    await storage.check()
    assert {key async for key in storage.list_keys()} == keys
    for key in keys:
        await storage.delete(key)
    assert [key async for key in storage.list_keys()] == []


async def test_a_blob_larger_than_a_part_streams_up_in_parts(storage: BlobStorage) -> None:
    """Beyond one part an object store gets a multipart upload (bounded memory); a
    failure in the middle of it leaves neither a blob nor an unfinished upload."""
    data = os.urandom(PART_BYTES * 2 + 4321)
    await storage.put_stream("results/20261124/big-0.png", chunks_of(data, 1 << 20),
                             "image/png")
    assert (await storage.stat("results/20261124/big-0.png")).size == len(data)
    assert b"".join(await read_all(storage, "results/20261124/big-0.png")) == data

    async def cut_off() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(data, 1 << 20):
            yield chunk
        raise ConnectionResetError("the upstream went away")

    with pytest.raises(ConnectionResetError):
        await storage.put_stream("results/20261124/cut-0.png", cut_off(), "image/png")
    assert not await storage.exists("results/20261124/cut-0.png")
    inner = storage.inner if isinstance(storage, RecentCache) else storage
    if isinstance(inner, S3Storage):
        await _no_upload_left(inner)


async def _no_upload_left(storage: S3Storage) -> None:
    # The abort runs in the background of the failed write: wait for it.
    await asyncio.gather(*storage._cleanups)
    uploads = await storage.client.list_multipart_uploads(Bucket=storage.bucket)
    assert not uploads.get("Uploads"), "an unfinished multipart upload was left"


async def test_s3_keys_live_under_the_prefix(s3_bucket: Bucket) -> None:
    storage = RecentCache(_s3(Place(Path("unused"), s3_bucket), "some/prefix/"))
    await storage.open()
    try:
        await storage.put(KEY, PNG, "image/png")
        assert await list_objects(s3_bucket) == [f"some/prefix/{KEY}"]
    finally:
        await storage.aclose()
