"""Blob storage in a local folder.

A blob is one file, written in place under its key's name: one file creation,
no temporary name and rename. No reader can see it half-written, because no job
names a key before its put() has returned (and keys are never reused). The
folders (one a day, see :func:`~muxproxy.storage.base.blob_key`) are made once
and remembered; each is checked, when first used, not to lead out of the root.

Files are not fsynced one by one: that took 1-4 ms per image on the benchmark
machine, on the path of every job, and the job table itself runs with SQLite's
``synchronous = NORMAL`` (a power cut may lose the last moments of work). The
same holds here: after a power cut the newest images may be missing or empty,
and the operating system's writeback makes them durable within seconds otherwise.

The blobs written last (up to ``RECENT_BYTES``) stay in memory too: a result is
usually read back the moment its job completes (the OpenAI surface answers with
its base64), and blobs are never rewritten under the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict
from pathlib import Path

from muxproxy.settings import SettingsError, file_path
from muxproxy.storage.base import BlobNotFound, BlobStorage, check_key

RECENT_BYTES = 16 * 1024 * 1024
# The last component may not be a symlink; the folders above it are checked once.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalStorage(BlobStorage):
    @classmethod
    def check_url(cls, url: str) -> None:
        if not url.startswith("file://") or not url.removeprefix("file://").strip("/"):
            raise SettingsError("storage.url: expected file://relative/folder or "
                                "file:///absolute/folder")

    @classmethod
    def from_url(cls, url: str) -> LocalStorage:
        cls.check_url(url)
        return cls(file_path(url))

    def __init__(self, root: str | Path, recent_bytes: int = RECENT_BYTES) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.recent_bytes = recent_bytes
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_size = 0
        self._folders: dict[str, str] = {}  # folder key -> its checked path

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        # A symlink planted inside the folder must not lead out of it.
        if not path.is_relative_to(self.root):
            raise BlobNotFound(key)
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        check_key(key)
        await asyncio.to_thread(self._put, key, data)
        self._remember(key, data)

    def _put(self, key: str, data: bytes) -> None:
        folder, _, name = key.rpartition("/")
        try:
            fd = os.open(f"{self._folder(folder, key)}/{name}", _CREATE, 0o644)
        except FileNotFoundError:
            # delete() removed the folder when it was left empty: make it again.
            self._folders.pop(folder, None)
            fd = os.open(f"{self._folder(folder, key)}/{name}", _CREATE, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            Path(self.root, key).unlink(missing_ok=True)
            raise
        os.close(fd)

    def _folder(self, folder: str, key: str) -> str:
        """The folder's path, made and checked the first time it is used."""
        known = self._folders.get(folder)
        if known is None:
            path = self.root / folder
            path.mkdir(parents=True, exist_ok=True)
            # A symlink planted inside the root must not lead out of it.
            if not path.resolve().is_relative_to(self.root):
                raise BlobNotFound(key)
            known = self._folders[folder] = str(path)
        return known

    def _remember(self, key: str, data: bytes) -> None:
        if len(data) > self.recent_bytes // 4:
            return
        old = self._recent.pop(key, None)
        if old is not None:
            self._recent_size -= len(old)
        self._recent[key] = data
        self._recent_size += len(data)
        while self._recent_size > self.recent_bytes:
            _, dropped = self._recent.popitem(last=False)
            self._recent_size -= len(dropped)

    def _still_there(self, key: str) -> bool:
        # One stat (microseconds), cheaper than a thread hop.
        return os.path.isfile(f"{self.root}/{key}")

    async def get(self, key: str) -> bytes:
        recent = self._recent.get(key)
        # The copy in memory only saves a read: the file stays the truth, so a blob
        # removed from the folder is gone here too. (The key was checked at put.)
        if recent is not None and self._still_there(key):
            return recent
        try:
            return await asyncio.to_thread(lambda: self._path(key).read_bytes())
        except (FileNotFoundError, IsADirectoryError):
            raise BlobNotFound(key) from None

    async def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except BlobNotFound:
            return False

    async def delete(self, key: str) -> None:
        dropped = self._recent.pop(key, None)
        if dropped is not None:
            self._recent_size -= len(dropped)
        await asyncio.to_thread(self._delete, self._path(key))

    def _delete(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        # Its own folder (inputs/<job>/) goes when empty; shared ones above stay, so
        # a concurrent put() never loses the folder it just made.
        if path.parent != self.root and len(path.relative_to(self.root).parts) > 2:
            with contextlib.suppress(OSError):
                path.parent.rmdir()

    def local_path(self, key: str) -> str | None:
        path = self._path(key)
        return str(path) if path.is_file() else None
