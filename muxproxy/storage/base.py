"""Where images live: result images and decoded reference images.

Keys are relative, slash-separated names the gateway makes itself
(:func:`blob_key`: ``results/20261121/<job>-0.png``); backends must still refuse a
key that would leave their root. Keys stored by earlier versions
(``results/<job>/0.png``) stay valid: a job keeps the key it was given.
"""

from __future__ import annotations

import abc
import re
import secrets
import time

# The readiness probe's blob (its own folder; only one probe runs at a time).
HEALTH_KEY = "health/probe.bin"
_KEY = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_.-]+)*$")


def blob_key(kind: str, job_id: str, created_at_ms: int, name: str, extension: str) -> str:
    """Where a job's blob goes: one folder a day (UTC) of the job's creation, so a
    store needs no folder of its own for each job, and old days are easy to prune."""
    day = time.strftime("%Y%m%d", time.gmtime(created_at_ms // 1000))
    return f"{kind}/{day}/{job_id}-{name}.{extension}"


class BlobNotFound(Exception):
    pass


def check_key(key: str) -> str:
    """Refuse anything but plain relative segments (no ``..``, no absolute paths)."""
    if not _KEY.match(key) or any(part in ("", ".", "..") for part in key.split("/")):
        raise BlobNotFound(key)
    return key


class BlobStorage(abc.ABC):
    @abc.abstractmethod
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """The blob's bytes; :class:`BlobNotFound` when absent."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the blob; nothing happens when it is absent."""

    @abc.abstractmethod
    def local_path(self, key: str) -> str | None:
        """A file path the server may stream from directly, if the backend has one."""

    async def check(self) -> None:
        """Raise unless a blob can be written, read back and deleted (readiness)."""
        data = secrets.token_bytes(16)
        await self.put(HEALTH_KEY, data, "application/octet-stream")
        try:
            if await self.get(HEALTH_KEY) != data:
                raise OSError("storage probe read back other bytes")
        finally:
            await self.delete(HEALTH_KEY)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass
