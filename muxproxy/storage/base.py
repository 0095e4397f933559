"""Where images live: result images and decoded reference images.

Keys are relative, slash-separated names the gateway makes itself
(``results/<job>/0.png``); backends must still refuse a key that would leave
their root.
"""

from __future__ import annotations

import abc
import re

_KEY = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_.-]+)*$")


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

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass
