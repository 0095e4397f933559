"""The gateway's normalized image request: what every surface parses into and
every provider translates from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Quality names clients send, mapped to the tiers a price table may list (OpenAI's
# xhigh and max, above high, are priced at the dearest tier).
QUALITY_TIERS: Mapping[str, str] = {"low": "standard", "standard": "standard",
                                    "medium": "medium", "hd": "high", "high": "high",
                                    "xhigh": "high", "max": "high"}


@dataclass(frozen=True)
class ImageRef:
    """A reference image or mask as stored on the job: a URL, or a blob we hold.

    Base64 from the client is decoded at the edge and kept in blob storage, so no
    image data ever sits in the job table or a log line.
    """

    url: str | None = None
    blob: str | None = None
    content_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in (("url", self.url), ("blob", self.blob),
                                  ("content_type", self.content_type)) if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRef:
        return cls(url=data.get("url"), blob=data.get("blob"),
                   content_type=data.get("content_type"))


@dataclass(frozen=True)
class PartialImage:
    """A preview an upstream streamed while the job runs (OpenAI's ``partial_images``).

    Only passed along in memory to a client streaming the job; never stored.
    ``fields`` are the upstream's own ``size``/``quality``/``background``/
    ``output_format`` for the event, when it sent them.
    """

    index: int
    b64_json: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    n: int = 1
    size: tuple[int, int] | None = None
    aspect_ratio: str | None = None
    resolution: str | None = None
    quality: str | None = None
    output_format: str | None = None
    images: tuple[ImageRef, ...] = ()
    mask: ImageRef | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_edit(self) -> bool:
        return bool(self.images)

    def input_keys(self) -> list[str]:
        """The blob keys of the uploads stored with the request (reference images,
        then the mask); URL references have none."""
        return [ref.blob for ref in (*self.images, self.mask)
                if ref is not None and ref.blob is not None]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"prompt": self.prompt, "n": self.n}
        if self.size is not None:
            data["size"] = list(self.size)
        for name in ("aspect_ratio", "resolution", "quality", "output_format"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.images:
            data["images"] = [ref.to_json() for ref in self.images]
        if self.mask is not None:
            data["mask"] = self.mask.to_json()
        if self.extra:
            data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GenerationRequest:
        size = data.get("size")
        mask = data.get("mask")
        return cls(
            prompt=data["prompt"],
            n=data.get("n", 1),
            size=(int(size[0]), int(size[1])) if size else None,
            aspect_ratio=data.get("aspect_ratio"),
            resolution=data.get("resolution"),
            quality=data.get("quality"),
            output_format=data.get("output_format"),
            images=tuple(ImageRef.from_json(i) for i in data.get("images", ())),
            mask=ImageRef.from_json(mask) if mask else None,
            extra=data.get("extra", {}),
        )
