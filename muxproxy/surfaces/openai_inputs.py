"""The OpenAI surface's edit inputs: image and mask files of a multipart form, or
``{"image_url"}`` objects (URLs or data URIs) of a JSON body; and how they are
described in the job's record (never their bytes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from muxproxy import validation as v
from muxproxy.app_state import AppState
from muxproxy.errors import InvalidRequest
from muxproxy.forms import Part
from muxproxy.generation import ImageRef
from muxproxy.validation import UploadedImage

IMAGE_PARTS = ("image", "image[]")


def form_images(files: Sequence[Part], state: AppState
                 ) -> tuple[list[UploadedImage], UploadedImage | None]:
    limits = state.settings.limits
    uploads = []
    mask = None
    for part in files:
        if part.name in IMAGE_PARTS:
            uploads.append(v.image_bytes(part.data, part.name, limits))
        elif part.name == "mask":
            if mask is not None:
                raise InvalidRequest("send one 'mask' file", param="mask")
            mask = v.image_bytes(part.data, "mask", limits)
        else:
            raise InvalidRequest(f"unexpected file field '{part.name}': send images as "
                                 "'image' or 'image[]' and the mask as 'mask'", param=part.name)
    return uploads, mask


def json_images(body: Mapping[str, Any], state: AppState) -> tuple[
        list[ImageRef | UploadedImage], ImageRef | None, UploadedImage | None]:
    """``images: [{"image_url"}]`` and ``mask: {"image_url"}``, as URLs or data URIs."""
    items = body.get("images")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise InvalidRequest("'images' must be an array of {\"image_url\": ...}",
                             param="images")
    ordered: list[ImageRef | UploadedImage] = []
    for item in items:
        ref, upload = _image_url(item, "images", state)
        ordered.extend(x for x in (ref, upload) if x is not None)
    mask_ref = mask_upload = None
    if body.get("mask") is not None:
        mask_ref, mask_upload = _image_url(body["mask"], "mask", state)
    return ordered, mask_ref, mask_upload


def _image_url(item: Any, name: str, state: AppState
               ) -> tuple[ImageRef | None, UploadedImage | None]:
    if isinstance(item, dict) and "file_id" in item:
        raise InvalidRequest("file_id references are not supported; send image_url",
                             param=name)
    # Nothing but the URL: other keys would be kept, unchecked, with the job.
    if not isinstance(item, dict) or set(item) != {"image_url"}:
        raise InvalidRequest(f"'{name}' entries must be {{\"image_url\": URL}}", param=name)
    url = v.http_url(item["image_url"], name, allow_data=True)
    if url.startswith("data:"):
        return None, v.decode_image(url, name, state.settings.limits)
    return ImageRef(url=url), None


def without_data(body: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body for the job's record, data URIs replaced by a note."""

    def clean(item: Any) -> Any:
        url = item.get("image_url") if isinstance(item, dict) else None
        if isinstance(url, str) and url.startswith("data:"):
            return {**item, "image_url": f"<data URI, {len(url)} chars>"}
        return item

    params = dict(body)
    if isinstance(params.get("images"), list):
        params["images"] = [clean(item) for item in params["images"]]
    if params.get("mask") is not None:
        params["mask"] = clean(params["mask"])
    return params


def describe_files(files: Sequence[Part]) -> dict[str, Any]:
    described: dict[str, Any] = {}
    for part in files:
        name = "image" if part.name in IMAGE_PARTS else part.name
        note = f"<file {part.filename!r}, {len(part.data)} bytes>"
        if name == "mask":
            described[name] = note
        else:
            described.setdefault(name, []).append(note)
    return described
