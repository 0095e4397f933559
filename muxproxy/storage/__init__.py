"""Blob storage backends, chosen by the storage URL's scheme."""

from __future__ import annotations

from muxproxy.settings import SettingsError, file_path
from muxproxy.storage.base import BlobNotFound, BlobStorage, blob_key
from muxproxy.storage.local import LocalStorage


def open_storage(url: str) -> BlobStorage:
    """``file://path`` today; ``s3://bucket`` and friends slot in here later."""
    scheme = url.split(":", 1)[0]
    if scheme == "file":
        return LocalStorage(file_path(url))
    raise SettingsError(f"storage.url: unsupported scheme {scheme!r}")


__all__ = ["BlobNotFound", "BlobStorage", "blob_key", "open_storage"]
