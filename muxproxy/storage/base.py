"""Where images live: result images and decoded reference images.

Keys are relative, slash-separated names the gateway makes itself
(:func:`blob_key`: ``results/20261121/<job>-0.png``); backends must still refuse a
key that would leave their root. Keys stored by earlier versions
(``results/<job>/0.png``) stay valid: a job keeps the key it was given.

The interface is shaped for object stores as well as folders: blobs are written
and read as streams of chunks, and a backend may hand out a URL of its own for a
download (:meth:`BlobStorage.url_for`). A backend implements four primitives
(``put_stream``, ``open_read``, ``stat``, ``delete``); ``put``/``get`` for callers
that hold whole blobs, ``exists`` and the readiness ``check`` are built on them.
"""

from __future__ import annotations

import abc
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass

from muxproxy.images import EXTENSIONS

# The readiness probe's blobs: a name of its own for each probe, since replicas
# sharing a bucket probe it at the same time.
HEALTH_FOLDER = "health"
# What one chunk of a streamed read holds at most (as Starlette's FileResponse).
CHUNK_BYTES = 64 * 1024
_KEY = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_.-]+)*$")
_TYPES = {extension: content_type for content_type, extension in EXTENSIONS.items()}


def blob_key(kind: str, job_id: str, created_at_ms: int, name: str, extension: str) -> str:
    """Where a job's blob goes: one folder a day (UTC) of the job's creation, so a
    store needs no folder of its own for each job, and old days are easy to prune."""
    day = time.strftime("%Y%m%d", time.gmtime(created_at_ms // 1000))
    return f"{kind}/{day}/{job_id}-{name}.{extension}"


def inline_disposition(filename: str) -> str:
    """The ``Content-Disposition`` of a download named ``filename`` (a key's last
    part: no quote or backslash to escape), shown in the browser."""
    return f'inline; filename="{filename}"'


class BlobNotFound(Exception):
    pass


class StorageUnavailable(OSError):
    """The backend could not be reached or refused the work (an object store's
    network, credentials or server errors, mapped at the backend's one boundary).
    An ``OSError``, as a failing disk's errors are: the job runner fails a job on a
    failed write as ``storage_error``, and downloads answer 503 with Retry-After."""


def check_key(key: str) -> str:
    """Refuse anything but plain relative segments (no ``..``, no absolute paths)."""
    if not _KEY.match(key):
        raise BlobNotFound(key)
    # The pattern leaves only "." and ".." segments to refuse, and only after a "/".
    if "/." in key and any(part in (".", "..") for part in key.split("/")):
        raise BlobNotFound(key)
    return key


def is_key(key: str) -> bool:
    """Whether ``key`` is one :func:`check_key` lets through (a listing skips others)."""
    try:
        check_key(key)
    except BlobNotFound:
        return False
    return True


def content_type_of(key: str) -> str:
    """The content type a key's extension names (the gateway's keys all carry one)."""
    return _TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")


@dataclass(frozen=True, slots=True)
class BlobInfo:
    size: int
    content_type: str


class BlobStorage(abc.ABC):
    @abc.abstractmethod
    async def put_stream(self, key: str, chunks: AsyncIterable[bytes],
                         content_type: str) -> None:
        """Store the chunks as one blob. When the chunks fail (or the write does),
        no blob is left under the key; no reader sees a blob before this returns."""

    @abc.abstractmethod
    def open_read(self, key: str, start: int = 0, end: int | None = None
                  ) -> AsyncGenerator[bytes, None]:
        """The blob's bytes ``[start, end)`` in chunks of at most :data:`CHUNK_BYTES`.

        Nothing is opened before the first chunk is asked for, and what iterating
        opened is closed when it ends or is stopped early, so a stream that is never
        iterated holds nothing. :class:`BlobNotFound` comes from the iteration."""

    @abc.abstractmethod
    async def stat(self, key: str) -> BlobInfo:
        """The blob's size and content type; :class:`BlobNotFound` when absent."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the blob; nothing happens when it is absent."""

    @abc.abstractmethod
    def list_keys(self) -> AsyncGenerator[str, None]:
        """Every blob's key, in no promised order: for ``muxproxy copy-storage``,
        never on a request's path."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Make ready what the backend needs before its first call (a client)."""

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self.put_stream(key, _single(data), content_type)

    async def get(self, key: str) -> bytes:
        """The blob's bytes; :class:`BlobNotFound` when absent."""
        return b"".join([chunk async for chunk in self.open_read(key)])

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except BlobNotFound:
            return False
        return True

    def local_path(self, key: str) -> str | None:
        """A file path the server may stream from directly, if the backend has one."""
        check_key(key)
        return None

    async def url_for(self, key: str, ttl_seconds: int, *,
                      filename: str | None = None) -> str | None:
        """A URL of the backend's own that serves the blob for ``ttl_seconds`` (an
        object store's presigned GET), or None when downloads go through us. With
        ``filename``, that URL answers with the ``Content-Disposition`` naming it, as
        the gateway's own download does."""
        check_key(key)
        return None

    async def check(self) -> None:
        """Raise unless a blob can be written, read back and deleted (readiness)."""
        data = secrets.token_bytes(16)
        key = f"{HEALTH_FOLDER}/probe-{data.hex()}.bin"
        await self.put(key, data, "application/octet-stream")
        try:
            if await self.get(key) != data:
                raise OSError("storage probe read back other bytes")
        finally:
            await self.delete(key)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data
