"""Blob storage backends, chosen by the storage URL's scheme from a table of names.

Each backend lives in its own module, imported only when a URL names it, so one
with dependencies of its own (S3 next) costs nothing unless configured.
"""

from __future__ import annotations

from typing import Protocol

from muxproxy.settings_checks import choose
from muxproxy.storage.base import BlobInfo, BlobNotFound, BlobStorage, blob_key
from muxproxy.storage.cache import RecentCache

# scheme -> "module:class"
BACKENDS: dict[str, str] = {
    "file": "muxproxy.storage.local:LocalStorage",
}


class StorageBackend(Protocol):
    """What a backend class offers beside the :class:`BlobStorage` interface."""

    def check_url(self, url: str) -> None:
        """Refuse a URL this backend cannot use (a SettingsError naming storage.url)."""

    def from_url(self, url: str) -> BlobStorage:
        """Storage for ``url``, ready to use."""


def storage_backend(url: str) -> StorageBackend:
    backend: StorageBackend = choose(BACKENDS, url.partition(":")[0], "storage.url", "scheme")
    return backend


def check_storage_url(url: str) -> None:
    storage_backend(url).check_url(url)


def open_storage(url: str) -> BlobStorage:
    """``file://path`` today; ``s3://bucket`` and friends slot in here later. Every
    backend is read through the cache of the blobs written last."""
    return RecentCache(storage_backend(url).from_url(url))


__all__ = ["BlobInfo", "BlobNotFound", "BlobStorage", "RecentCache", "StorageBackend",
           "blob_key", "check_storage_url", "open_storage", "storage_backend"]
