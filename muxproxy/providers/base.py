"""The provider interface: what every upstream adapter implements.

A provider turns a :class:`GenerationRequest` into upstream calls. Sync upstreams
answer ``submit`` with :class:`Finished`; async ones answer with :class:`Submitted`
(an upstream id plus whatever is needed to poll, stored on the job before anything
else) and are then asked ``poll`` until they finish.

Every failure leaves a provider as :class:`UpstreamError`, already classified as
transient (retry, maybe on another route) or permanent (fail the job). Lower-level
exceptions (aiohttp, JSON, KeyError on an odd body) are mapped once, in
:meth:`Provider.call`, and never leak past this layer.
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import aiohttp
import orjson

from muxproxy.clock import Clock
from muxproxy.generation import GenerationRequest
from muxproxy.providers.errors import UpstreamError
from muxproxy.settings import ProviderSettings, SettingsError


@dataclass(frozen=True)
class ImageData:
    """Image bytes the upstream sent inline (base64 in JSON, inlineData...)."""

    data: bytes
    content_type: str | None = None


@dataclass(frozen=True)
class ImageLink:
    """An image the upstream left at a URL; the gateway downloads and stores it."""

    url: str


Output = ImageData | ImageLink


@dataclass(frozen=True)
class Finished:
    images: tuple[Output, ...]
    revised_prompt: str | None = None


@dataclass(frozen=True)
class Submitted:
    """An async upstream accepted the job. ``state`` holds poll/cancel URLs etc."""

    upstream_id: str
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Running:
    """Still working upstream; ``state`` replaces the stored state when given."""

    state: Mapping[str, Any] | None = None


SubmitOutcome = Finished | Submitted
PollOutcome = Finished | Running


@dataclass(frozen=True)
class Reference:
    """A reference image or mask handed to a provider: a URL, bytes, or both."""

    url: str | None
    data: bytes | None
    content_type: str | None


@dataclass(frozen=True)
class Call:
    """Everything a provider needs for one job."""

    job_id: str
    request: GenerationRequest
    upstream_model: str
    params: Mapping[str, Any]
    images: tuple[Reference, ...]
    mask: Reference | None


@dataclass(frozen=True)
class Handle:
    """What a provider needs to poll or cancel: the stored upstream id and state."""

    job_id: str
    upstream_id: str
    upstream_model: str
    state: Mapping[str, Any]


class Provider(abc.ABC):
    """Base class for upstream adapters. Subclasses set ``kind`` and implement ``submit``."""

    kind: ClassVar[str]
    #: True when ``submit`` may answer :class:`Submitted` and ``poll`` must work.
    is_async: ClassVar[bool] = False
    #: False for upstreams that work without a key (the demo, local servers).
    needs_key: ClassVar[bool] = True
    #: The ``options`` keys this kind reads; a config naming any other is refused.
    option_names: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def validate(cls, settings: ProviderSettings) -> None:
        """Refuse settings this kind cannot work with: a :class:`SettingsError`
        naming the key. Runs when the config loads, before anything is opened, so
        nothing is first found wrong at start or at the first call. Kinds with
        options, or that need a ``base_url``, extend it."""
        where = f"providers.{settings.name}"
        if settings.base_url and not settings.base_url.startswith(("http://", "https://")):
            raise SettingsError(f"{where}.base_url: must start with http:// or https://")
        unknown = sorted(set(settings.options) - cls.option_names)
        if unknown:
            known = ", ".join(sorted(cls.option_names)) or "none"
            raise SettingsError(f"{where}.options.{unknown[0]}: not an option of kind "
                                f"{settings.kind!r} (known: {known})")

    @property
    def configured(self) -> bool:
        """Can this provider serve at all? Not when its key is empty and it needs one
        or its config names one. Routes to one that cannot are skipped."""
        key = self.settings.api_key
        return bool(key) or (key is None and not self.needs_key)

    @property
    def api_key(self) -> str:
        return self.settings.api_key or ""

    def __init__(self, settings: ProviderSettings, http: aiohttp.ClientSession,
                 clock: Clock) -> None:
        self.settings = settings
        self.name = settings.name
        self.http = http
        self.clock = clock
        self.timeout = aiohttp.ClientTimeout(total=settings.timeout_seconds)

    def check(self, request: GenerationRequest, upstream_model: str,  # noqa: B027
              params: Mapping[str, Any]) -> None:
        """Raise :class:`Unsupported` for what this upstream cannot do. Called at submit."""

    @abc.abstractmethod
    async def submit(self, call: Call) -> SubmitOutcome: ...

    async def poll(self, handle: Handle) -> PollOutcome:
        raise UpstreamError(f"{self.kind} does not poll", transient=False)

    async def cancel(self, handle: Handle) -> None:  # noqa: B027 - optional hook
        """Best effort: ask the upstream to stop working on a job we gave up."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release anything the provider holds beyond the shared HTTP session."""

    @asynccontextmanager
    async def call(self, method: str, url: str, **kwargs: Any
                   ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One upstream HTTP request with errors mapped to :class:`UpstreamError`.

        Non-2xx responses are yielded as they are: the adapter reads the provider's
        error body and calls :meth:`error_for`. Transport failures become transient.
        """
        kwargs.setdefault("timeout", self.timeout)
        try:
            async with self.http.request(method, url, **kwargs) as response:
                yield response
        except UpstreamError:
            raise
        except TimeoutError:
            raise UpstreamError(f"{self.name}: upstream timed out", transient=True,
                                code="upstream_timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{self.name}: connection failed: {type(exc).__name__}",
                                transient=True, code="upstream_unavailable") from None

    async def reference_bytes(self, ref: Reference) -> tuple[bytes, str]:
        """The bytes of a reference image. The runner fetched every URL already,
        behind the address guard and the size limits: a provider never downloads
        what a client named."""
        if ref.data is None:
            raise UpstreamError(f"{self.name}: a reference image was not fetched",
                                transient=False, code="invalid_reference")
        return ref.data, ref.content_type or "image/png"

    async def read_json(self, response: aiohttp.ClientResponse) -> Any:
        """The body as JSON; a body that is not JSON is a transient upstream fault.

        At most ``max_response_bytes`` are read: a longer answer fails the call for
        good (asking again would only buy the same oversized answer).
        """
        limit = self.settings.max_response_bytes
        try:
            raw = await read_limited(response, limit)
        except (aiohttp.ClientError, asyncio.IncompleteReadError):
            raise UpstreamError(f"{self.name}: connection lost reading the response",
                                transient=True) from None
        if raw is None:
            raise UpstreamError(f"{self.name}: upstream answer larger than {limit} bytes "
                                f"(providers.{self.name}.max_response_bytes)",
                                transient=False, code="response_too_large",
                                status=response.status)
        try:
            try:
                # orjson: several times faster on the megabytes of a b64_json image.
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                return json.loads(raw)  # what orjson refuses (NaN, huge integers)
        except (ValueError, UnicodeDecodeError):
            raise UpstreamError(f"{self.name}: invalid JSON from upstream (HTTP "
                                f"{response.status})", transient=True,
                                status=response.status) from None

    def error_for(self, response: aiohttp.ClientResponse, message: str,
                  code: str | None = None) -> UpstreamError:
        """Classify an HTTP error: 408/409/429/5xx are transient, other 4xx permanent."""
        status = response.status
        transient = status in (408, 409, 429) or status >= 500
        return UpstreamError(f"{self.name}: {message}" if message else
                             f"{self.name}: HTTP {status}",
                             transient=transient, code=code, status=status,
                             retry_after=retry_after(response.headers.get("Retry-After")))


# Enough of an error body to find the provider's message; a longer one is not read.
MAX_ERROR_BODY = 64 * 1024


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytearray | None:
    """The body, or None as soon as it proves longer than ``limit`` bytes (the rest
    is never read, so an endless or huge body costs at most ``limit`` of memory)."""
    if (response.content_length or 0) > limit:
        return None
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            return None
    return data


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None

