"""An offline provider that renders real images: the prompt on a gradient.

Deterministic for a given prompt (and ``seed``), so tests can compare bytes. It
honours ``background`` (transparent: the gradient in an oval on real alpha, PNG or
WebP only), ``output_compression`` (the JPEG/WebP quality), ``style`` (vivid: more
saturated, natural: less), ``seed`` (part of the colours' source) and
``moderation`` (it blocks nothing, so either level holds). ``options``:
``delay_seconds`` (per image job); ``failure_rate`` (0..1, the share of calls
that fail, drawn from the job id, prompt and attempt); ``failure_kind``
(``permanent``, the default, or ``transient`` to act like an overloaded upstream
answering 503); ``async`` (answer with an upstream id and finish on the first
poll, to exercise polling offline).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import random
import textwrap
from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from muxproxy import images
from muxproxy.generation import GenerationRequest
from muxproxy.providers.base import (
    Call,
    Finished,
    Handle,
    ImageData,
    PollOutcome,
    Provider,
    SubmitOutcome,
    Submitted,
    Unsupported,
    UpstreamError,
)
from muxproxy.settings import ProviderSettings, SettingsError


class DemoProvider(Provider):
    needs_key = False
    kind = "demo"
    honours = frozenset({"background", "output_compression", "moderation", "style", "seed"})
    is_async = True
    option_names = frozenset({"delay_seconds", "failure_rate", "failure_kind", "async"})
    #: Submits seen, for tests and the curious.
    calls = 0

    @classmethod
    def validate(cls, settings: ProviderSettings) -> None:
        super().validate(settings)
        where, options = f"providers.{settings.name}.options", settings.options
        delay = _number(options.get("delay_seconds", 0))
        if delay is None or delay < 0:
            raise SettingsError(f"{where}.delay_seconds: expected a number of seconds >= 0, "
                                f"got {options['delay_seconds']!r}")
        rate = _number(options.get("failure_rate", 0))
        if rate is None or not 0 <= rate <= 1:
            raise SettingsError(f"{where}.failure_rate: expected a number from 0 to 1, "
                                f"got {options['failure_rate']!r}")
        if options.get("failure_kind", "permanent") not in ("permanent", "transient"):
            raise SettingsError(f"{where}.failure_kind: expected 'permanent' or 'transient', "
                                f"got {options['failure_kind']!r}")
        if not isinstance(options.get("async", False), bool):
            raise SettingsError(f"{where}.async: expected true or false, "
                                f"got {options['async']!r}")

    def check(self, request: GenerationRequest, upstream_model: str,
              params: Mapping[str, Any]) -> None:
        if request.extra.get("background") == "transparent" and \
                request.output_format == "jpeg":
            raise Unsupported("a transparent background needs output_format png or webp",
                              param="background")

    @property
    def _delay(self) -> float:
        return float(self.settings.options.get("delay_seconds", 0.0))

    @property
    def _failure_rate(self) -> float:
        return float(self.settings.options.get("failure_rate", 0.0))

    async def submit(self, call: Call) -> SubmitOutcome:
        self.calls += 1
        rng = random.Random(f"{call.job_id}:{call.request.prompt}:{self.calls}")
        if rng.random() < self._failure_rate:
            if self.settings.options.get("failure_kind") == "transient":
                raise UpstreamError("demo: 503 service unavailable (configured failure_rate)",
                                    transient=True, code="demo_unavailable", status=503)
            raise UpstreamError("demo failure (configured failure_rate)", transient=False,
                                code="demo_failure")
        if self.settings.options.get("async"):
            return Submitted(upstream_id=f"demo-{call.job_id}", state={"params": _spec(call)})
        return await self._render(_spec(call))

    async def poll(self, handle: Handle) -> PollOutcome:
        return await self._render(handle.state["params"])

    async def _render(self, spec: dict[str, Any]) -> Finished:
        if self._delay > 0:
            await self.clock.sleep(self._delay)
        rendered = await asyncio.to_thread(_render_all, spec)
        return Finished(images=tuple(ImageData(data, ctype) for data, ctype in rendered),
                        revised_prompt=spec["prompt"])


def _number(value: Any) -> float | None:
    """A finite number as ``float()`` reads it (a ``${VAR}`` gives a string), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _spec(call: Call) -> dict[str, Any]:
    request = call.request
    width, height = images.pixel_size(request.size, request.aspect_ratio, request.resolution)
    extra = request.extra
    return {"prompt": request.prompt, "n": request.n, "width": width, "height": height,
            "format": request.output_format or "png",
            "background": extra.get("background"), "style": extra.get("style"),
            "compression": extra.get("output_compression"), "seed": extra.get("seed")}


def _render_all(spec: dict[str, Any]) -> list[tuple[bytes, str]]:
    return [_render(spec, i) for i in range(spec["n"])]


def _render(spec: Mapping[str, Any], index: int) -> tuple[bytes, str]:
    prompt, width, height, fmt = spec["prompt"], spec["width"], spec["height"], spec["format"]
    seed = spec.get("seed")
    source = f"{prompt}\0{index}" if seed is None else f"{prompt}\0{index}\0{seed}"
    digest = hashlib.sha256(source.encode()).digest()
    start, end = digest[:3], digest[3:6]
    # Turn the square ramp before resizing it, so a rotation cannot swap the sides.
    ramp = Image.linear_gradient("L").transpose(
        Image.Transpose.ROTATE_90 if digest[6] % 2 else Image.Transpose.FLIP_TOP_BOTTOM
    ).resize((width, height))
    bands = [ramp.point(_lerp(a, b)) for a, b in zip(start, end, strict=True)]
    image = Image.merge("RGB", bands)
    draw = ImageDraw.Draw(image)
    font_size = max(12, min(width, height) // 14)
    font = ImageFont.load_default(size=font_size)
    text = "\n".join(textwrap.wrap(prompt, width=max(8, width // (font_size // 2 + 1)))[:6])
    draw.multiline_text((width // 16, height // 16), text, fill=(255, 255, 255), font=font,
                        stroke_width=max(1, font_size // 16), stroke_fill=(0, 0, 0))
    style = spec.get("style")
    if style is not None:
        image = ImageEnhance.Color(image).enhance(1.6 if style == "vivid" else 0.6)
    if spec.get("background") == "transparent":
        # Real alpha: the picture in an oval, clear outside it.
        alpha = Image.new("L", (width, height), 0)
        ImageDraw.Draw(alpha).ellipse((0, 0, width - 1, height - 1), fill=255)
        image.putalpha(alpha)
    out = io.BytesIO()
    pil_format = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    options: dict[str, Any] = {"compress_level": 1} if fmt == "png" else {}
    if fmt != "png" and spec.get("compression") is not None:
        options["quality"] = int(spec["compression"])
    image.save(out, format=pil_format, **options)
    return out.getvalue(), images.FORMATS[fmt]


def _lerp(a: int, b: int) -> list[int]:
    return [a + (b - a) * i // 255 for i in range(256)]
