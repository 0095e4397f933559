"""Blob storage backends, chosen by the storage URL's scheme from a table of names.

Each backend lives in its own module, imported only when a URL names it, so one
with dependencies of its own (S3: aiobotocore) costs nothing unless configured.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from muxproxy.settings import StorageSettings
from muxproxy.settings_checks import choose
from muxproxy.storage.base import (
    BlobInfo,
    BlobNotFound,
    BlobStorage,
    StorageUnavailable,
    blob_key,
    inline_disposition,
)
from muxproxy.storage.cache import RecentCache

# scheme -> "module:class"
BACKENDS: dict[str, str] = {
    "file": "muxproxy.storage.local:LocalStorage",
    "s3": "muxproxy.storage.s3:S3Storage",
}


class StorageBackend(Protocol):
    """What a backend class offers beside the :class:`BlobStorage` interface."""

    def check_url(self, url: str, settings: StorageSettings) -> None:
        """Refuse a URL (or options of ``settings``) this backend cannot use, as a
        SettingsError naming the key."""

    def from_url(self, url: str, settings: StorageSettings) -> BlobStorage:
        """Storage for ``url``; its ``open()`` makes it ready."""


def storage_backend(url: str) -> StorageBackend:
    backend: StorageBackend = choose(BACKENDS, url.partition(":")[0], "storage.url", "scheme")
    return backend


def check_storage_url(url: str, settings: StorageSettings | None = None) -> None:
    settings = replace(settings or StorageSettings(), url=url)
    storage_backend(url).check_url(url, settings)


def open_storage(url: str, settings: StorageSettings | None = None) -> BlobStorage:
    """Storage for ``url`` (``file://path``, ``s3://bucket/prefix``), with the other
    options of ``settings``; await its ``open()`` before use. Every backend is read
    through the cache of the blobs written last."""
    settings = replace(settings or StorageSettings(), url=url)
    return RecentCache(storage_backend(url).from_url(url, settings))


__all__ = ["BlobInfo", "BlobNotFound", "BlobStorage", "RecentCache", "StorageBackend",
           "StorageUnavailable", "blob_key", "check_storage_url", "inline_disposition",
           "open_storage", "storage_backend"]
