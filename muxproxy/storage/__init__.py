"""Blob storage backends, chosen by the storage URL's scheme."""

from __future__ import annotations

from muxproxy.settings import SettingsError, file_path
from muxproxy.storage.base import BlobInfo, BlobNotFound, BlobStorage, blob_key
from muxproxy.storage.cache import RecentCache
from muxproxy.storage.local import LocalStorage


def open_storage(url: str) -> BlobStorage:
    """``file://path`` today; ``s3://bucket`` and friends slot in here later. Every
    backend is read through the cache of the blobs written last."""
    scheme = url.split(":", 1)[0]
    if scheme == "file":
        return RecentCache(LocalStorage(file_path(url)))
    raise SettingsError(f"storage.url: unsupported scheme {scheme!r}")


__all__ = ["BlobInfo", "BlobNotFound", "BlobStorage", "RecentCache", "blob_key",
           "open_storage"]
