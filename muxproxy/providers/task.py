"""Another service speaking the native task API: apimodels, or another muxproxy.

Submit ``POST {base_url}/api/v1/images/generations`` -> ``{code, msg, data: {taskId,
state}}``; poll ``GET {base_url}/api/v1/images/generations?task_id=ID``. ``pending``
and ``processing`` keep polling, ``completed`` carries ``resultUrls``, ``failed``
carries ``failMsg`` (and ``failCode``, kept as the job's code). A synchronous upstream
model (gpt-image-2-lite) answers ``completed`` at submit: the job ends without a poll.

Fields sent: ``model``, ``prompt``, ``n`` (when above 1), ``size`` (``WxH``),
``aspect_ratio``, ``resolution``, ``quality``, ``output_format``. Reference images the
client gave as URLs go as ``image_url`` (one) or ``image_urls`` (several); the first
one it sent as bytes goes as ``image_base64``, further ones as ``data:`` URIs in
``image_urls`` -- or, with ``options.base64_list = true``, all of them as an
``image_base64`` array, which a muxproxy upstream accepts and whose ``image_urls``
takes http(s) URLs only. The mask goes as ``mask_base64``. Route ``params`` are merged
in last.

The task API has no cancel call: a job we give up on runs to its end upstream.
Errors are ``{code, msg, data}``; a ``code`` of 400 or more in the body counts like
the HTTP status, even under HTTP 200.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp

from muxproxy.clock import Clock
from muxproxy.providers.base import (
    Call,
    Finished,
    Handle,
    ImageLink,
    PollOutcome,
    Provider,
    Running,
    SubmitOutcome,
    Submitted,
    UpstreamError,
)
from muxproxy.providers.payloads import as_dict, data_uri, unexpected
from muxproxy.settings import ProviderSettings, SettingsError

PATH = "/api/v1/images/generations"
RUNNING = frozenset({"pending", "processing"})


class TaskProvider(Provider):
    kind = "task"
    is_async = True
    error_paths = ("msg",)
    option_names = frozenset({"base64_list"})

    @classmethod
    def validate(cls, settings: ProviderSettings) -> None:
        super().validate(settings)
        if not isinstance(settings.options.get("base64_list", False), bool):
            raise SettingsError(f"providers.{settings.name}.options.base64_list: expected "
                                f"true or false, got {settings.options['base64_list']!r}")

    def __init__(self, settings: ProviderSettings, http: aiohttp.ClientSession,
                 clock: Clock) -> None:
        super().__init__(settings, http, clock)
        self.url = self.base_url + PATH
        self.base64_list = bool(settings.options.get("base64_list", False))

    async def submit(self, call: Call) -> SubmitOutcome:
        body = await self._body(call)
        data = self._data(await self.call_json("POST", self.url, json=body))
        task_id = data.get("taskId")
        if not isinstance(task_id, str) or not task_id:
            raise unexpected(self, "no taskId")
        outcome = self._outcome(data)
        if isinstance(outcome, Finished):
            return outcome
        return Submitted(upstream_id=task_id)

    async def poll(self, handle: Handle) -> PollOutcome:
        envelope = await self.call_json("GET", self.url, params={"task_id": handle.upstream_id})
        return self._outcome(self._data(envelope))

    async def _body(self, call: Call) -> dict[str, Any]:
        request = call.request
        body: dict[str, Any] = {"model": call.upstream_model, "prompt": request.prompt}
        if request.n != 1:
            body["n"] = request.n
        if request.size is not None:
            body["size"] = f"{request.size[0]}x{request.size[1]}"
        for name in ("aspect_ratio", "resolution", "quality", "output_format"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        urls = [ref.url for ref in call.images if ref.url is not None]
        inline = [await self.reference_bytes(ref) for ref in call.images if ref.url is None]
        encoded = [base64.b64encode(data).decode("ascii") for data, _ in inline]
        if self.base64_list and len(encoded) > 1:
            body["image_base64"] = encoded
        elif encoded:
            body["image_base64"] = encoded[0]
            urls += [data_uri(data, ctype) for data, ctype in inline[1:]]
        if len(urls) == 1:
            body["image_url"] = urls[0]
        elif urls:
            body["image_urls"] = urls
        if call.mask is not None:
            mask, _ = await self.reference_bytes(call.mask)
            body["mask_base64"] = base64.b64encode(mask).decode("ascii")
        body.update(call.params)
        return body

    def _data(self, answer: Any) -> dict[str, Any]:
        """The ``data`` of a 2xx ``{code, msg, data}`` answer, whose own ``code`` may
        still say it failed."""
        envelope = as_dict(answer)
        code = envelope.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and code >= 400:
            raise UpstreamError(f"{self.name}: {envelope.get('msg') or f'error {code}'}",
                                transient=code in (408, 409, 429) or code >= 500, status=code)
        data = envelope.get("data")
        if not isinstance(data, dict):
            raise unexpected(self, "no data object")
        return data

    def _outcome(self, data: dict[str, Any]) -> Finished | Running:
        state = data.get("state")
        if state in RUNNING:
            return Running()
        if state == "completed":
            return Finished(images=tuple(ImageLink(u) for u in _result_urls(data)))
        if state == "failed":
            code = data.get("failCode")
            raise UpstreamError(f"{self.name}: {data.get('failMsg') or 'generation failed'}",
                                transient=False,
                                code=code if isinstance(code, str) and code
                                else "generation_failed")
        raise unexpected(self, f"state {state!r}")


def _result_urls(data: dict[str, Any]) -> list[str]:
    """``resultUrls``, or the same inside ``resultJson`` (a JSON string, as callbacks send)."""
    urls = data.get("resultUrls")
    if urls is None and isinstance(data.get("resultJson"), str):
        try:
            urls = as_dict(json.loads(data["resultJson"])).get("resultUrls")
        except ValueError:
            urls = None
    return [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []
