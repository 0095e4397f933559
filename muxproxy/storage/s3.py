"""Blob storage in an S3-compatible bucket: AWS S3, Cloudflare R2, MinIO, Backblaze
B2 and the like, through aiobotocore (botocore's requests on aiohttp).

``s3://bucket/prefix`` names the bucket and a prefix every key is put under;
``[storage.s3]`` names the endpoint, region, addressing style and credentials
(empty ones come from the standard AWS chain: ``AWS_*`` variables, the shared
config and credentials files with an optional profile, then a container's or an
instance's role).

Writes stream: the chunks are gathered up to one part (:data:`PART_BYTES`); a blob
that fits is one ``PutObject``, a larger one a multipart upload sent part by part
and aborted if anything fails, so no reader ever sees a partial object. Reads are
one ``GetObject`` (a byte range at most) read in chunks as they are asked for.
Every failure of the service, the network or the credentials is mapped here, at
one boundary, to :class:`~muxproxy.storage.base.StorageUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Coroutine, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from muxproxy.logs import get_logger
from muxproxy.settings import S3Settings, SettingsError, StorageSettings
from muxproxy.storage.base import (
    CHUNK_BYTES,
    BlobInfo,
    BlobNotFound,
    BlobStorage,
    StorageUnavailable,
    check_key,
    content_type_of,
    inline_disposition,
    is_key,
)

if TYPE_CHECKING:
    from aiobotocore.session import AioSession
    from types_aiobotocore_s3 import S3Client

log = get_logger("muxproxy.storage.s3")

# A blob up to this size is one PutObject; larger ones go up in parts this size
# (S3 wants at least 5 MiB for every part but the last). At most one part is held.
PART_BYTES = 8 * 1024 * 1024
# SigV4 presigned URLs live at most seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Answers that mean "no such blob" (a HEAD has no body, so only its status).
_ABSENT = {"NoSuchKey", "404", "NotFound"}


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` as ``("bucket", "some/prefix/")`` (the prefix
    empty or ending in a slash)."""
    if not url.startswith("s3://"):
        raise SettingsError("storage.url: expected s3://bucket or s3://bucket/prefix")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise SettingsError(f"storage.url: {bucket!r} is not a bucket name (3-63 lowercase "
                            "letters, digits, dots and hyphens)")
    prefix = prefix.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except BlobNotFound:
            raise SettingsError(f"storage.url: the prefix {prefix!r} must be plain "
                                "slash-separated names") from None
        prefix += "/"
    return bucket, prefix


class S3Storage(BlobStorage):
    @classmethod
    def check_url(cls, url: str, settings: StorageSettings) -> None:
        split_url(url)
        s3 = settings.s3
        if s3.endpoint_url and not s3.endpoint_url.startswith(("http://", "https://")):
            raise SettingsError("storage.s3.endpoint_url: must start with http:// or https://")
        if bool(s3.access_key_id) != bool(s3.secret_access_key):
            raise SettingsError("storage.s3: access_key_id and secret_access_key go "
                                "together (or leave both empty for the AWS chain)")
        if s3.session_token and not s3.access_key_id:
            raise SettingsError("storage.s3.session_token: needs access_key_id")
        if s3.max_attempts < 1 or s3.max_connections < 1:
            raise SettingsError("storage.s3: max_attempts and max_connections must be at "
                                "least 1")
        if s3.connect_timeout_seconds <= 0 or s3.read_timeout_seconds <= 0:
            raise SettingsError("storage.s3: timeouts must be positive")
        if settings.redirect and settings.url_ttl_seconds > MAX_PRESIGN_SECONDS:
            raise SettingsError(f"storage.url_ttl_seconds: at most {MAX_PRESIGN_SECONDS} "
                                "(seven days) with storage.redirect: presigned URLs live no "
                                "longer")
        try:
            import aiobotocore  # noqa: F401
        except ImportError:
            raise SettingsError("storage.url: s3:// needs the s3 extra: pip install "
                                "'muxproxy[s3]'") from None

    @classmethod
    def from_url(cls, url: str, settings: StorageSettings) -> S3Storage:
        cls.check_url(url, settings)
        bucket, prefix = split_url(url)
        return cls(bucket, prefix, settings.s3)

    def __init__(self, bucket: str, prefix: str, settings: S3Settings,
                 session: AioSession | None = None) -> None:
        """``session``: botocore's loaded models and credential chain, to share
        between several storages (the tests do); one of its own otherwise."""
        self.bucket = bucket
        self.prefix = prefix
        self.settings = settings
        self._session = session
        self._client: S3Client | None = None
        self._closers = AsyncExitStack()
        self._cleanups: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3Storage.open() was not awaited")
        return self._client

    async def open(self) -> None:
        if self._client is not None:
            return
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession

        s3 = self.settings
        session = self._session or AioSession(profile=s3.profile or None)
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path" if s3.path_style else "virtual"},
            connect_timeout=s3.connect_timeout_seconds,
            read_timeout=s3.read_timeout_seconds,
            retries={"mode": "standard", "total_max_attempts": s3.max_attempts},
            max_pool_connections=s3.max_connections,
            # Checksums only where the API requires them: R2, B2 and older MinIO
            # refuse the default CRC32 trailers of recent botocore versions.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required")
        with _mapped("open"):
            self._client = await self._closers.enter_async_context(session.create_client(
                "s3", region_name=s3.region or None, endpoint_url=s3.endpoint_url or None,
                aws_access_key_id=s3.access_key_id or None,
                aws_secret_access_key=s3.secret_access_key or None,
                aws_session_token=s3.session_token or None, config=config))

    async def aclose(self) -> None:
        if self._cleanups:
            await asyncio.wait(self._cleanups, timeout=self.settings.connect_timeout_seconds)
        self._client = None
        await self._closers.aclose()

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        if len(data) > PART_BYTES:
            await super().put(key, data, content_type)
            return
        name = self._object(key)
        with _mapped("write"):
            await self._put_object(name, data, content_type)

    async def _put_object(self, name: str, data: bytes, content_type: str) -> None:
        try:
            await self.client.put_object(Bucket=self.bucket, Key=name, Body=data,
                                         ContentType=content_type)
        except asyncio.CancelledError:
            # Cut off mid-request, the bucket may have stored it all the same; no job
            # will name the key, so it goes (in the background: we were cancelled).
            self._spawn(self._forget(name))
            raise

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes],
                         content_type: str) -> None:
        name = self._object(key)
        stream = aiter(chunks)
        first = await _gather(stream, PART_BYTES + 1)
        if len(first) <= PART_BYTES:
            with _mapped("write"):
                await self._put_object(name, bytes(first), content_type)
        else:
            await self._multipart(name, first, stream, content_type)

    async def _multipart(self, name: str, pending: bytearray, stream: AsyncIterator[bytes],
                         content_type: str) -> None:
        """Part after part; only the service's failures are mapped, the chunks' own
        (a client that went away) pass as they are."""
        with _mapped("write"):
            upload = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=name, ContentType=content_type)
        upload_id = upload["UploadId"]
        parts: list[Any] = []
        try:
            while pending:
                if len(pending) <= PART_BYTES:  # then the stream has ended after it
                    pending += await _gather(stream, PART_BYTES + 1 - len(pending))
                part, pending = bytes(pending[:PART_BYTES]), pending[PART_BYTES:]
                with _mapped("write"):
                    sent = await self.client.upload_part(
                        Bucket=self.bucket, Key=name, UploadId=upload_id,
                        PartNumber=len(parts) + 1, Body=part)
                parts.append({"PartNumber": len(parts) + 1, "ETag": sent["ETag"]})
            with _mapped("write"):
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id,
                    MultipartUpload={"Parts": parts})
        except BaseException:
            self._spawn(self._abort(name, upload_id))
            raise

    def _spawn(self, cleanup: Coroutine[Any, Any, None]) -> None:
        """Clean up in the background (the caller may be cancelled), kept referenced
        until done."""
        task = asyncio.ensure_future(cleanup)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _abort(self, name: str, upload_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.client.abort_multipart_upload(Bucket=self.bucket, Key=name,
                                                     UploadId=upload_id)

    async def _forget(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await self.client.delete_object(Bucket=self.bucket, Key=name)

    async def open_read(self, key: str, start: int = 0, end: int | None = None
                        ) -> AsyncGenerator[bytes, None]:
        name = self._object(key)
        if end is not None and end <= start:
            return
        with _mapped("read", key):
            try:
                if start == 0 and end is None:
                    answer = await self.client.get_object(Bucket=self.bucket, Key=name)
                else:
                    answer = await self.client.get_object(
                        Bucket=self.bucket, Key=name,
                        Range=f"bytes={start}-{'' if end is None else end - 1}")
            except Exception as exc:
                if _code(exc) == "InvalidRange":
                    return  # starts at or past the end: nothing to read
                raise
            body = answer["Body"]
            try:
                while chunk := await body.read(CHUNK_BYTES):
                    yield chunk
            finally:
                body.close()

    async def stat(self, key: str) -> BlobInfo:
        name = self._object(key)
        with _mapped("read", key):
            head = await self.client.head_object(Bucket=self.bucket, Key=name)
        content_type = head.get("ContentType") or content_type_of(key)
        return BlobInfo(size=head["ContentLength"], content_type=content_type)

    async def delete(self, key: str) -> None:
        name = self._object(key)
        with _mapped("delete"):
            await self.client.delete_object(Bucket=self.bucket, Key=name)

    async def list_keys(self) -> AsyncGenerator[str, None]:
        with _mapped("list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix)
            async for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"].removeprefix(self.prefix)
                    if is_key(key):
                        yield key

    async def url_for(self, key: str, ttl_seconds: int, *,
                      filename: str | None = None) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._object(key)}
        if filename is not None:
            # Signed into the URL: the bucket answers with this header.
            params["ResponseContentDisposition"] = inline_disposition(filename)
        with _mapped("sign"):
            url: str = await self.client.generate_presigned_url(
                "get_object", Params=params,
                ExpiresIn=max(1, min(ttl_seconds, MAX_PRESIGN_SECONDS)))
        return url


async def _gather(stream: AsyncIterator[bytes], limit: int) -> bytearray:
    """Chunks from ``stream`` until ``limit`` bytes or its end (one chunk may pass
    the limit: the caller splits)."""
    buffer = bytearray()
    while len(buffer) < limit:
        try:
            buffer += await anext(stream)
        except StopAsyncIteration:
            break
    return buffer


def _code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError, else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


@contextlib.contextmanager
def _mapped(operation: str, key: str | None = None) -> Iterator[None]:
    """The one boundary: a missing blob is :class:`BlobNotFound` (when reading a
    key), any other failure of botocore or the network :class:`StorageUnavailable`,
    with the S3 error code or the exception's class and never a URL's signature."""
    from aiohttp import ClientError as HttpError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = _code(exc)
        if key is not None and code in _ABSENT:
            raise BlobNotFound(key) from None
        raise StorageUnavailable(f"object storage {operation} failed: {code}") from exc
    except (BotoCoreError, HttpError, OSError, TimeoutError) as exc:
        if isinstance(exc, StorageUnavailable):
            raise
        raise StorageUnavailable(f"object storage {operation} failed: "
                                 f"{type(exc).__name__}") from exc

