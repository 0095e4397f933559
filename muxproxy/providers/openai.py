"""OpenAI's Images API with each model's rules (PROVIDERS.md "OpenAI Images").

The wire format is the general one of :mod:`muxproxy.providers.openai_compatible`;
this module maps the normalized request onto what each model family accepts and
refuses the rest in ``check`` (a 400 before any upstream call):

- gpt-image-2 (and 2.5, which adds quality xhigh and max): any WxH with sides
  divisible by 16, ratio 1:3..3:1, long side at most 3840 and at most 3840x2160
  pixels; aspect_ratio + resolution give the resolution's pixel area at that
  ratio, shrunk to fit.
- gpt-image-1 / 1.5 / 1-mini: 1024x1024, 1536x1024, 1024x1536 or auto; an aspect
  ratio picks the nearest size of the same orientation; 1k only.
- dall-e-3: 1024x1024, 1792x1024, 1024x1792, n=1, no edits, quality standard|hd.
- dall-e-2: 256/512/1024 squares, one reference image for edits.

A client streaming ``partial_images`` on a GPT Image model makes the call stream
too: previews go to ``Call.on_partial`` as OpenAI sends them.

Qualities follow the gateway's price tiers (pricing.QUALITY_TIERS: standard is
the low tier, hd the high one). A model not in the table gets no rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from muxproxy import images
from muxproxy.generation import GenerationRequest
from muxproxy.providers.base import Unsupported
from muxproxy.providers.openai_compatible import (
    OpenAICompatibleProvider,
    options,
    require_image_for_mask,
)
from muxproxy.providers.sizes import PixelBox, fit, nearest_size, ratio_size

MAX_EDGE, MAX_PIXELS, MAX_RATIO = 3840, 3840 * 2160, 3.0
# gpt-image-2's free sizes, rounded down so that they never pass its limits.
FREE_SIZES = PixelBox(multiple=16, min_side=16, max_side=MAX_EDGE, max_area=MAX_PIXELS,
                      round_down=True)


@dataclass(frozen=True)
class Family:
    """What one family of models accepts."""

    #: The sizes it renders; empty means any size within gpt-image-2's limits.
    sizes: tuple[tuple[int, int], ...]
    auto_size: bool
    #: Gateway quality -> the model's own word (None: leave it to the model).
    qualities: Mapping[str, str | None]
    max_n: int
    max_edit_images: int
    #: GPT image models: output_format works, results are always b64_json.
    gpt_image: bool
    options: frozenset[str]


GPT_QUALITIES: Mapping[str, str | None] = {
    "auto": "auto", "low": "low", "standard": "low", "medium": "medium", "high": "high",
    "hd": "high"}
GPT_OPTIONS = frozenset({"background", "moderation", "output_compression", "input_fidelity",
                         "user"})

# gpt-image-2.5 (sunburst, flare) adds xhigh and max above high.
GPT_IMAGE_2_5 = Family(sizes=(), auto_size=True,
                       qualities={**GPT_QUALITIES, "xhigh": "xhigh", "max": "max"}, max_n=10,
                       max_edit_images=16, gpt_image=True, options=GPT_OPTIONS)
GPT_IMAGE_2 = Family(sizes=(), auto_size=True, qualities=GPT_QUALITIES, max_n=10,
                     max_edit_images=16, gpt_image=True, options=GPT_OPTIONS)
GPT_IMAGE_1 = Family(sizes=((1024, 1024), (1536, 1024), (1024, 1536)), auto_size=True,
                     qualities=GPT_QUALITIES, max_n=10, max_edit_images=16, gpt_image=True,
                     options=GPT_OPTIONS)
DALL_E_3 = Family(sizes=((1024, 1024), (1792, 1024), (1024, 1792)), auto_size=False,
                  qualities={"auto": None, "low": "standard", "standard": "standard",
                             "high": "hd", "hd": "hd"},
                  max_n=1, max_edit_images=0, gpt_image=False,
                  options=frozenset({"style", "user", "response_format"}))
DALL_E_2 = Family(sizes=((256, 256), (512, 512), (1024, 1024)), auto_size=False,
                  qualities={"auto": None, "low": None, "standard": None},
                  max_n=10, max_edit_images=1, gpt_image=False,
                  options=frozenset({"user", "response_format"}))

# By model-name prefix, first match wins (dated snapshots share their family).
FAMILIES: tuple[tuple[str, Family], ...] = (
    ("gpt-image-2.5", GPT_IMAGE_2_5),
    ("gpt-image-2", GPT_IMAGE_2),
    ("gpt-image-1", GPT_IMAGE_1),
    ("chatgpt-image", GPT_IMAGE_1),
    ("dall-e-3", DALL_E_3),
    ("dall-e-2", DALL_E_2),
)

CHOICES: Mapping[str, frozenset[str]] = {
    "style": frozenset({"vivid", "natural"}),
    "background": frozenset({"transparent", "opaque", "auto"}),
    "moderation": frozenset({"low", "auto"}),
    "input_fidelity": frozenset({"high", "low"}),
    "response_format": frozenset({"url", "b64_json"}),
}


def family_of(model: str) -> Family | None:
    for prefix, family in FAMILIES:
        if model.startswith(prefix):
            return family
    return None


class OpenAIProvider(OpenAICompatibleProvider):
    kind = "openai"
    needs_key = True

    def fields(self, request: GenerationRequest, model: str,
               params: Mapping[str, Any]) -> dict[str, Any]:
        family = family_of(model)
        if family is None:
            return super().fields(request, model, params)
        require_image_for_mask(request)
        if request.n > family.max_n:
            raise Unsupported(f"{model} makes at most {family.max_n} image"
                              f"{'s' if family.max_n > 1 else ''} per request", param="n")
        if request.images and not family.max_edit_images:
            raise Unsupported(f"{model} cannot edit images", param="image")
        if len(request.images) > family.max_edit_images:
            raise Unsupported(f"{model} takes at most {family.max_edit_images} reference "
                              f"image{'s' if family.max_edit_images > 1 else ''}",
                              param="image")
        body: dict[str, Any] = {"model": model, "prompt": request.prompt, "n": request.n}
        size = _size(family, model, request)
        if size is not None:
            body["size"] = size
        if request.quality is not None:
            if request.quality not in family.qualities:
                raise Unsupported(f"{model} supports quality "
                                  f"{', '.join(family.qualities)}, not {request.quality!r}",
                                  param="quality")
            if (quality := family.qualities[request.quality]) is not None:
                body["quality"] = quality
        if request.output_format is not None:
            if family.gpt_image:
                body["output_format"] = request.output_format
            elif request.output_format != "png":
                raise Unsupported(f"{model} returns PNG images only", param="output_format")
        body.update(_options(family, model, request, params))
        partials = request.extra.get("partial_images")
        if family.gpt_image and isinstance(partials, int) and partials > 0:
            # A client streams previews: ask for them, and pass them on as they come.
            body.update(stream=True, partial_images=partials)
        return body


def _options(family: Family, model: str, request: GenerationRequest,
             params: Mapping[str, Any]) -> dict[str, Any]:
    found = options(request, params)
    for name, value in list(found.items()):
        # GPT image models always answer b64_json and refuse the field; how the
        # gateway receives the image is not the client's concern.
        if (name == "response_format" and family.gpt_image) or \
                (name == "input_fidelity" and not request.images):
            del found[name]
            continue
        if name not in family.options:
            raise Unsupported(f"{model} does not support {name!r}", param=name)
        allowed = CHOICES.get(name)
        if allowed is not None and value not in allowed:
            raise Unsupported(f"{name} must be one of {', '.join(sorted(allowed))}",
                              param=name)
    compression = found.get("output_compression")
    if compression is not None and (isinstance(compression, bool) or
                                    not isinstance(compression, int) or
                                    not 0 <= compression <= 100):
        raise Unsupported("output_compression must be a whole number from 0 to 100",
                          param="output_compression")
    if found.get("background") == "transparent" and request.output_format == "jpeg":
        raise Unsupported("a transparent background needs output_format png or webp",
                          param="background")
    return found


def _size(family: Family, model: str, request: GenerationRequest) -> str | None:
    """The ``size`` field: explicit WxH checked, or aspect_ratio + resolution mapped."""
    if request.size is not None:
        width, height = request.size
        if family.sizes and (width, height) not in family.sizes:
            raise Unsupported(f"{model} supports sizes {_names(family)}, not "
                              f"{width}x{height}", param="size")
        if not family.sizes:
            _check_free_size(model, width, height)
        return f"{width}x{height}"
    ratio_name, resolution = request.aspect_ratio, request.resolution
    if ratio_name is None and resolution is None:
        return None
    if family.sizes and resolution not in (None, "1k"):
        raise Unsupported(f"{model} renders at 1k only ({_names(family)})",
                          param="resolution")
    if ratio_name == "auto":
        return "auto" if family.auto_size else None
    ratio = images.parse_ratio(ratio_name) if ratio_name else 1.0
    if ratio is None:
        raise Unsupported(f"unsupported aspect_ratio {ratio_name!r}", param="aspect_ratio")
    if family.sizes and request.extra.get("aspect_from_input"):
        # Only the input image's shape, not the client's ask: the nearest size there is.
        width, height = min(family.sizes, key=lambda s: (abs(math.log(s[0] / s[1] / ratio)),
                                                         -s[0] * s[1]))
    elif family.sizes:
        width, height = _nearest(family.sizes, ratio, model, ratio_name or "1:1")
    else:
        width, height = _free_size(model, ratio, resolution, ratio_name or "1:1")
    return f"{width}x{height}"


def _nearest(sizes: tuple[tuple[int, int], ...], ratio: float, model: str,
             ratio_name: str) -> tuple[int, int]:
    size = nearest_size(sizes, ratio)
    if size is None:
        raise Unsupported(f"{model} has no size for aspect ratio {ratio_name} "
                          f"(sizes: {', '.join(f'{w}x{h}' for w, h in sizes)})",
                          param="aspect_ratio")
    return size


def _free_size(model: str, ratio: float, resolution: str | None,
               ratio_name: str) -> tuple[int, int]:
    if not 1 / MAX_RATIO <= ratio <= MAX_RATIO:
        raise Unsupported(f"{model} supports aspect ratios from 1:3 to 3:1, not {ratio_name}",
                          param="aspect_ratio")
    return fit(*ratio_size(ratio, resolution), FREE_SIZES)


def _check_free_size(model: str, width: int, height: int) -> None:
    if width % 16 or height % 16:
        problem = "both sides must be divisible by 16"
    elif not 1 / MAX_RATIO <= width / height <= MAX_RATIO:
        problem = "the aspect ratio must be between 1:3 and 3:1"
    elif max(width, height) > MAX_EDGE or width * height > MAX_PIXELS:
        problem = "the largest size is 3840x2160"
    else:
        return
    raise Unsupported(f"{model} cannot render {width}x{height}: {problem}", param="size")


def _names(family: Family) -> str:
    names = [f"{w}x{h}" for w, h in family.sizes] + (["auto"] if family.auto_size else [])
    return ", ".join(names)
