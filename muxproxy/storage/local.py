"""Blob storage in a local folder.

A blob is one file, written in place under its key's name: one file creation,
no temporary name and rename. No reader can see it half-written, because no job
names a key before its put() has returned (and keys are never reused). The
folders (one a day, see :func:`~muxproxy.storage.base.blob_key`) are made once
and remembered; each is checked, when first used, not to lead out of the root.

Files are not fsynced one by one: that cost milliseconds per image on the path of
every job, and the job table itself runs with SQLite's ``synchronous = NORMAL`` (a
power cut may lose the last moments of work). The same holds here: after a power
cut the newest images may be missing or empty, and the operating system's
writeback makes them durable within seconds otherwise.

The content type is not kept: the gateway's keys name it by their extension.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from pathlib import Path
from stat import S_ISREG
from typing import Any, TypeVar

from muxproxy.settings import SettingsError, StorageSettings, file_path
from muxproxy.storage.base import (
    CHUNK_BYTES,
    BlobInfo,
    BlobNotFound,
    BlobStorage,
    check_key,
    content_type_of,
    is_key,
)

T = TypeVar("T")
# The last component may not be a symlink; the folders above it are checked once.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_CLOEXEC
# A blob up to this size is written on the event loop's thread: creating and
# writing it there costs less CPU than the hop to a worker thread (docs/performance.md).
INLINE_BYTES = 64 * 1024


class LocalStorage(BlobStorage):
    @classmethod
    def check_url(cls, url: str, settings: StorageSettings | None = None) -> None:
        if not url.startswith("file://") or not url.removeprefix("file://").strip("/"):
            raise SettingsError("storage.url: expected file://relative/folder or "
                                "file:///absolute/folder")

    @classmethod
    def from_url(cls, url: str, settings: StorageSettings | None = None) -> LocalStorage:
        cls.check_url(url)
        return cls(file_path(url))

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._folders: dict[str, str] = {}  # folder key -> its checked path

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        # A symlink planted inside the folder must not lead out of it.
        if not path.is_relative_to(self.root):
            raise BlobNotFound(key)
        return path

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        # The path of every result image: a small one is written at once, a larger
        # one in one thread hop (copying it into the page cache would hold the loop).
        check_key(key)
        if len(data) <= INLINE_BYTES:
            self._put(key, data)
        else:
            await asyncio.to_thread(self._put, key, data)

    def _put(self, key: str, data: bytes) -> None:
        fd = self._create(key)
        try:
            _write_all(fd, data)
        except BaseException:
            os.close(fd)
            Path(self.root, key).unlink(missing_ok=True)
            raise
        os.close(fd)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes],
                         content_type: str) -> None:
        check_key(key)
        file = _ThreadFile()
        try:
            await file.run(lambda: file.opened(self._create(key)))
            async for chunk in chunks:
                await file.run(functools.partial(_write_all, file.fd, chunk))
        except BaseException:
            file.close(then=lambda: Path(self.root, key).unlink(missing_ok=True))
            raise
        file.close()

    def _create(self, key: str) -> int:
        folder, _, name = key.rpartition("/")
        try:
            return os.open(f"{self._folder(folder, key)}/{name}", _CREATE, 0o644)
        except FileNotFoundError:
            # delete() removed the folder when it was left empty: make it again.
            self._folders.pop(folder, None)
            return os.open(f"{self._folder(folder, key)}/{name}", _CREATE, 0o644)

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

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(lambda: self._path(key).read_bytes())
        except (FileNotFoundError, IsADirectoryError):
            raise BlobNotFound(key) from None

    async def open_read(self, key: str, start: int = 0, end: int | None = None
                        ) -> AsyncGenerator[bytes, None]:
        path = self._path(key)
        file = _ThreadFile()
        try:
            try:
                size = await file.run(functools.partial(_open_file, file, path))
            except (FileNotFoundError, IsADirectoryError):
                raise BlobNotFound(key) from None
            offset, stop = start, size if end is None else min(end, size)
            while offset < stop:
                wanted = min(CHUNK_BYTES, stop - offset)
                chunk = await file.run(functools.partial(os.pread, file.fd, wanted, offset))
                if not chunk:
                    break  # cut short since it was opened
                offset += len(chunk)
                yield chunk
        finally:
            file.close()

    async def stat(self, key: str) -> BlobInfo:
        try:
            result = os.stat(self._path(key))
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        if not S_ISREG(result.st_mode):
            raise BlobNotFound(key)
        return BlobInfo(size=result.st_size, content_type=content_type_of(key))

    async def exists(self, key: str) -> bool:
        try:
            check_key(key)
            # A folder this store made and checked needs one lstat (the cache of the
            # blobs written last asks on every read back); anything else is resolved.
            folder, _, name = key.rpartition("/")
            known = self._folders.get(folder)
            if known is not None and S_ISREG(_mode(f"{known}/{name}")):
                return True
            return self._path(key).is_file()
        except BlobNotFound:
            return False

    async def delete(self, key: str) -> None:
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

    async def list_keys(self) -> AsyncGenerator[str, None]:
        # One folder per step in a thread: a day's folder of images may be large.
        folders = [self.root]
        while folders:
            entries = await asyncio.to_thread(_entries, folders.pop())
            for path, is_folder in entries:
                if is_folder:
                    folders.append(path)
                    continue
                key = path.relative_to(self.root).as_posix()
                if is_key(key):
                    yield key


def _entries(folder: Path) -> list[tuple[Path, bool]]:
    """The folder's regular files and folders (symlinks are neither)."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                found.append((Path(entry.path), True))
            elif entry.is_file(follow_symlinks=False):
                found.append((Path(entry.path), False))
    return found


def _open_file(file: _ThreadFile, path: Path) -> int:
    """Open a regular file for reading; its size."""
    result = os.fstat(file.opened(os.open(path, _READ)))
    if not S_ISREG(result.st_mode):
        raise IsADirectoryError(path)
    return result.st_size


def _mode(path: str) -> int:
    """The file's mode, 0 when there is none; a symlink is not followed."""
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _ThreadFile:
    """A file descriptor whose calls each run in a worker thread.

    When its user stops early (an error, a cancellation), it is closed once the
    call in flight has ended, never under it: a closed descriptor's number may
    already belong to another file that the call would then read or write.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._step: asyncio.Future[Any] | None = None

    @property
    def fd(self) -> int:
        assert self._fd is not None
        return self._fd

    def opened(self, fd: int) -> int:
        self._fd = fd
        return fd

    async def run(self, call: Callable[[], T]) -> T:
        step: asyncio.Future[T] = asyncio.get_running_loop().run_in_executor(None, call)
        self._step = step
        return await asyncio.shield(step)

    def close(self, then: Callable[[], None] | None = None) -> None:
        step = self._step
        if step is None or step.done():
            self._close(then)
        else:
            step.add_done_callback(lambda done: self._close(then, done))

    def _close(self, then: Callable[[], None] | None,
               step: asyncio.Future[Any] | None = None) -> None:
        """Close the file, then run ``then`` (only if this opened a file at all)."""
        if step is not None and not step.cancelled():
            step.exception()  # seen: its caller has moved on
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if then is not None:
            then()
