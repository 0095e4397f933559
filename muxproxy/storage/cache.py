"""The blobs written last, kept in memory over any backend.

A result is usually read back the moment its job completes (the OpenAI surface
answers with its base64), and blobs are never rewritten under the same key; so
the bytes just written (up to ``RECENT_BYTES``) are kept, and such a read costs
only the backend's ``exists``. The backend stays the truth: a blob removed from it
by other hands (an operator, another replica's retention sweep) is gone here too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator

from muxproxy.storage.base import BlobInfo, BlobStorage

RECENT_BYTES = 16 * 1024 * 1024


class RecentCache(BlobStorage):
    def __init__(self, inner: BlobStorage, limit_bytes: int = RECENT_BYTES) -> None:
        self.inner = inner
        self.limit_bytes = limit_bytes
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self.inner.put(key, data, content_type)
        self._remember(key, data)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes],
                         content_type: str) -> None:
        kept: list[bytes] | None = []
        size = 0

        async def keeping() -> AsyncIterator[bytes]:
            nonlocal kept, size
            async for chunk in chunks:
                size += len(chunk)
                if kept is not None and size <= self._largest:
                    kept.append(chunk)
                else:
                    kept = None
                yield chunk

        await self.inner.put_stream(key, keeping(), content_type)
        if kept is not None:
            self._remember(key, b"".join(kept))

    @property
    def _largest(self) -> int:
        """A blob bigger than this is not kept: it would push out many others."""
        return self.limit_bytes // 4

    def _remember(self, key: str, data: bytes) -> None:
        if len(data) > self._largest:
            return
        self._forget(key)
        self._recent[key] = data
        self._size += len(data)
        while self._size > self.limit_bytes:
            _, dropped = self._recent.popitem(last=False)
            self._size -= len(dropped)

    def _forget(self, key: str) -> None:
        dropped = self._recent.pop(key, None)
        if dropped is not None:
            self._size -= len(dropped)

    async def get(self, key: str) -> bytes:
        recent = self._recent.get(key)
        # The copy only saves a read: a blob gone from the backend is gone here too.
        if recent is not None and await self.inner.exists(key):
            return recent
        return await self.inner.get(key)

    def open_read(self, key: str, start: int = 0, end: int | None = None
                  ) -> AsyncGenerator[bytes, None]:
        return self.inner.open_read(key, start, end)

    async def stat(self, key: str) -> BlobInfo:
        return await self.inner.stat(key)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def delete(self, key: str) -> None:
        self._forget(key)
        await self.inner.delete(key)

    def list_keys(self) -> AsyncGenerator[str, None]:
        return self.inner.list_keys()

    async def open(self) -> None:
        await self.inner.open()

    def local_path(self, key: str) -> str | None:
        return self.inner.local_path(key)

    async def url_for(self, key: str, ttl_seconds: int, *,
                      filename: str | None = None) -> str | None:
        return await self.inner.url_for(key, ttl_seconds, filename=filename)

    async def check(self) -> None:
        # The backend's own probe: a read back from memory would prove nothing.
        await self.inner.check()

    async def aclose(self) -> None:
        await self.inner.aclose()
