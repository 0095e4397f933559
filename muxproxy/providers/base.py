"""The provider interface: what every upstream adapter implements.

A provider turns a :class:`GenerationRequest` into upstream calls. Sync upstreams
answer ``submit`` with :class:`Finished`; async ones answer with :class:`Submitted`
(an upstream id plus whatever is needed to poll, stored on the job before anything
else) and are then asked ``poll`` until they finish.

Every failure leaves a provider as :class:`UpstreamError`, already classified as
transient (retry, maybe on another route) or permanent (fail the job). Lower-level
exceptions (aiohttp, JSON, KeyError on an odd body) are mapped once, in
:meth:`Provider.call`, and never leak past this layer.

What adapters share beyond the interface: each kind's default base URL and auth
header (``UPSTREAMS``), one error-body reader (:meth:`Provider.upstream_error`,
with :mod:`muxproxy.providers.wire`), one ``Retry-After`` parser
(:func:`muxproxy.pipeline.backoff.parse_retry_after`) and one size fitter
(:mod:`muxproxy.providers.sizes`). An adapter keeps only its upstream's dialect.
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import orjson

from muxproxy.clock import Clock
from muxproxy.generation import GenerationRequest, PartialImage
from muxproxy.pipeline.backoff import parse_retry_after
from muxproxy.providers.wire import message_at, read_error, read_limited
from muxproxy.settings import ProviderSettings, SettingsError


class UpstreamError(Exception):
    """A failed upstream call, classified. ``message`` is safe to show the client."""

    def __init__(self, message: str, *, transient: bool, code: str | None = None,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.code = code or ("upstream_unavailable" if transient else "upstream_error")
        self.status = status
        self.retry_after = retry_after


class Unsupported(Exception):
    """The request asks for something this provider cannot do (a 400 before any call)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Upstream:
    """Where a kind's API lives unless ``base_url`` says otherwise, and how it
    takes the key: ``header: scheme KEY`` (the key alone when ``scheme`` is empty)."""

    base_url: str = ""
    header: str = "Authorization"
    scheme: str = "Bearer"

    def auth_headers(self, key: str) -> dict[str, str]:
        if not key:
            return {}
        return {self.header: f"{self.scheme} {key}" if self.scheme else key}


# By kind. An empty ``base_url``: the provider's own must be configured.
UPSTREAMS: Mapping[str, Upstream] = {
    "openai": Upstream("https://api.openai.com/v1"),
    "openai-compatible": Upstream(),
    "xai": Upstream("https://api.x.ai/v1"),
    "gemini": Upstream("https://generativelanguage.googleapis.com/v1beta",
                       header="x-goog-api-key", scheme=""),
    "fal": Upstream("https://queue.fal.run", scheme="Key"),
    "replicate": Upstream("https://api.replicate.com/v1"),
    "bfl": Upstream("https://api.bfl.ai", header="x-key", scheme=""),
    "task": Upstream(),
}


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
    #: Where an upstream that streams previews hands each one (a no-op by default).
    on_partial: Callable[[PartialImage], None] = lambda _: None


@dataclass(frozen=True)
class Handle:
    """What a provider needs to poll or cancel: the stored upstream id and state."""

    job_id: str
    upstream_id: str
    upstream_model: str
    state: Mapping[str, Any]


# Options a client may send (the OpenAI surface's fields, the gateway's ``seed``) that
# change the image, in ``GenerationRequest.extra``, with the value that asks for
# nothing (None: any value asks). A provider whose ``honours`` lacks one that asks
# for something gets no such request: the gateway refuses it (400, naming the model).
CLIENT_OPTIONS: Mapping[str, object] = {
    "background": "auto", "output_compression": 100, "moderation": "auto",
    "input_fidelity": None, "style": None, "seed": None,
}


class Provider(abc.ABC):
    """Base class for upstream adapters. Subclasses set ``kind`` and implement ``submit``."""

    kind: ClassVar[str]
    #: True when ``submit`` may answer :class:`Submitted` and ``poll`` must work.
    is_async: ClassVar[bool] = False
    #: False for upstreams that work without a key (the demo, local servers).
    needs_key: ClassVar[bool] = True
    #: The ``options`` keys this kind reads; a config naming any other is refused.
    option_names: ClassVar[frozenset[str]] = frozenset()
    #: The :data:`CLIENT_OPTIONS` this kind carries out (or passes to an upstream
    #: that does, its ``check`` refusing what a model cannot).
    honours: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def validate(cls, settings: ProviderSettings) -> None:
        """Refuse settings this kind cannot work with: a :class:`SettingsError`
        naming the key. Runs when the config loads, before anything is opened, so
        nothing is first found wrong at start or at the first call. Kinds with
        options, or that need a ``base_url``, extend it."""
        where = f"providers.{settings.name}"
        if settings.base_url and not settings.base_url.startswith(("http://", "https://")):
            raise SettingsError(f"{where}.base_url: must start with http:// or https://")
        upstream = UPSTREAMS.get(settings.kind)
        if upstream is not None and not (settings.base_url or upstream.base_url):
            raise SettingsError(f"{where}.base_url: required for kind {settings.kind!r}")
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

    #: Where this upstream's error bodies keep their message, as dotted paths into
    #: the JSON; the first found is shown (see :meth:`upstream_error`).
    error_paths: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: ProviderSettings, http: aiohttp.ClientSession,
                 clock: Clock) -> None:
        self.settings = settings
        self.name = settings.name
        self.http = http
        self.clock = clock
        self.timeout = aiohttp.ClientTimeout(total=settings.timeout_seconds)
        self.validate(settings)
        upstream = UPSTREAMS.get(self.kind)
        self.base_url = (settings.base_url or (upstream.base_url if upstream else "")
                         ).rstrip("/")

    def auth_headers(self) -> dict[str, str]:
        """The key in this kind's own header (none without a key)."""
        upstream = UPSTREAMS.get(self.kind)
        return upstream.auth_headers(self.api_key) if upstream else {}

    def unhonoured(self, request: GenerationRequest) -> str | None:
        """The first client option the request asks for that this kind cannot honour."""
        for name, neutral in CLIENT_OPTIONS.items():
            value = request.extra.get(name)
            if value is not None and value != neutral and name not in self.honours:
                return name
        return None

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

        The key goes in this kind's auth header; ``headers`` add to it. Non-2xx
        responses are yielded as they are: the adapter reads the provider's error
        body (:meth:`upstream_error`). Transport failures become transient.
        """
        kwargs.setdefault("timeout", self.timeout)
        kwargs["headers"] = {**self.auth_headers(), **kwargs.get("headers", {})}
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

    async def call_json(self, method: str, url: str, **kwargs: Any) -> Any:
        """One upstream request whose 2xx answer is JSON (:meth:`read_json`); any
        other answer raises :meth:`upstream_error`."""
        async with self.call(method, url, **kwargs) as response:
            if not ok(response):
                raise await self.upstream_error(response)
            return await self.read_json(response)

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
                # orjson first: faster on the megabytes of a b64_json image.
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                return json.loads(raw)  # what orjson refuses (NaN, huge integers)
        except (ValueError, UnicodeDecodeError):
            raise UpstreamError(f"{self.name}: invalid JSON from upstream (HTTP "
                                f"{response.status})", transient=True,
                                status=response.status) from None

    async def upstream_error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        """A non-2xx answer, classified, with the message found at ``error_paths``."""
        body = await read_error(response)
        return self.error_for(response, message_at(body.json, self.error_paths) or "")

    def error_for(self, response: aiohttp.ClientResponse, message: str,
                  code: str | None = None) -> UpstreamError:
        """Classify an HTTP error: 408/409/429/5xx are transient, other 4xx permanent."""
        status = response.status
        transient = status in (408, 409, 429) or status >= 500
        return UpstreamError(f"{self.name}: {message}" if message else
                             f"{self.name}: HTTP {status}",
                             transient=transient, code=code, status=status,
                             retry_after=self.retry_after(response, "Retry-After"))

    def retry_after(self, response: aiohttp.ClientResponse, header: str) -> float | None:
        return parse_retry_after(response.headers.get(header), self.clock.now())


def ok(response: aiohttp.ClientResponse) -> bool:
    return 200 <= response.status < 300
