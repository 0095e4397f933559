"""The ModelMux-style generations API (``surfaces/modelmux.py``): submit, poll,
fetch the bytes; errors are ``{"error", "code"}``."""

from __future__ import annotations

from typing import Any

from muxproxy.openapi import fields
from muxproxy.openapi.common import (
    API_KEY,
    IDEMPOTENCY_KEY,
    STORAGE_503,
    Part,
    Schema,
    answer,
    as_text,
    choice,
    errors,
    history_params,
    integer,
    millis,
    nullable,
    obj,
    operation,
    path_param,
    presigned_redirect,
    ref,
    string,
)
from muxproxy.settings import Settings

TAG = "ModelMux-style API"
SHAPE = "ModelMuxError"
STATES = ["pending", "processing", "completed", "failed"]
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")


def _fields(settings: Settings) -> dict[str, Schema]:
    return {"prompt": fields.prompt(settings.limits),
            "model": fields.model(settings, required=False),
            "resolution": fields.resolution(),
            "quality": fields.quality(),
            "aspectRatio": fields.aspect_ratio()}


def form_request(settings: Settings) -> Schema:
    text = {name: as_text(schema) for name, schema in _fields(settings).items()}
    schema = obj(text, ["prompt"], closed=False, description=(
        f"The same fields as text parts; every file part, whatever its name, is a reference "
        f"image (at most {settings.limits.max_reference_images}), judged by its bytes."))
    schema["additionalProperties"] = {"type": "string", "format": "binary"}
    return schema


def part(settings: Settings) -> Part:
    common = {"historyId": string(), "status": choice(STATES), "provider": string(),
              "model": string(), "resolution": string(),
              "aspectRatio": nullable(string()), "createdAt": millis("When it was created")}
    schemas: dict[str, Schema] = {
        SHAPE: obj({"error": string(), "code": string()}, ["error", "code"]),
        "ModelMuxRequest": obj(_fields(settings), ["prompt"], description=(
            "model defaults to surfaces.default_model (or the first configured model); "
            "resolution to the model's first; aspectRatio to 1:1 without reference images. "
            "null is the same as leaving a field out.")),
        "ModelMuxFormRequest": form_request(settings),
        "ModelMuxCreated": obj({
            **common, "creditsCharged": integer("The price."),
            "outputUrl": nullable(string("A replay (Idempotency-Key) of a completed "
                                         "generation: a fresh link.", format="uri")),
            "errorMessage": nullable(string("A replay of a failed generation: why.")),
        }, [*common, "creditsCharged"]),
        "ModelMuxGeneration": obj({
            **common,
            "outputUrl": nullable(string("A signed link to the image.", format="uri")),
            "creditsUsed": integer("0 for a failed (refunded) generation."),
            "completedAt": nullable(integer()),
            "errorMessage": nullable(string()),
            "code": nullable(string("A failed generation: why, as a code ('cancelled' "
                                    "when its client cancelled it).")),
        }, [*common, "outputUrl", "creditsUsed", "completedAt"]),
        "ModelMuxGenerationList": obj({
            "generations": {"type": "array", "items": ref("ModelMuxGeneration"),
                            "description": "The key's generations, newest first."},
            "nextCursor": nullable(string("The 'before' of the next page; null on the "
                                          "last.")),
        }, ["generations", "nextCursor"]),
    }
    generation_id = path_param("id", "The historyId (any task id works).")
    read_errors = {401: "missing or invalid API key.",
                   404: "no such generation for this key.", 500: "unexpected server error."}
    image = {"type": "string", "format": "binary"}
    paths: dict[str, dict[str, Any]] = {
        "/api/v1/generations": {
            "post": operation(
                "Submit a generation", TAG, operation_id="modelmuxCreate", security=API_KEY,
                parameters=[IDEMPOTENCY_KEY],
                body={"required": True, "content": {
                    "application/json": {"schema": ref("ModelMuxRequest")},
                    "multipart/form-data": {"schema": ref("ModelMuxFormRequest")}}},
                responses={"200": answer("Stored; poll the historyId.",
                                         ref("ModelMuxCreated")),
                           **errors(SHAPE, CREATE_ERRORS)}),
            "get": operation(
                "List the key's generations", TAG, operation_id="modelmuxList",
                security=API_KEY, parameters=history_params(),
                description="Newest first; pass nextCursor as 'before' for the next page.",
                responses={"200": answer("A page of generations.",
                                         ref("ModelMuxGenerationList")),
                           **errors(SHAPE, {400: "an invalid limit or before.",
                                            401: "missing or invalid API key.",
                                            500: "unexpected server error."})}),
        },
        "/api/v1/generations/{id}/cancel": {"post": operation(
            "Cancel a generation", TAG, operation_id="modelmuxCancel", security=API_KEY,
            parameters=[generation_id],
            description="A pending or processing generation ends as failed with code "
                        "'cancelled'; its credits come back and the upstream job is "
                        "cancelled where the provider can (docs/history.md).",
            responses={"200": answer("The generation, cancelled.", ref("ModelMuxGeneration")),
                       **errors(SHAPE, {**read_errors,
                                        409: "the generation has ended already (code "
                                             "already_finished)."})})},
        "/api/v1/generations/{id}": {"get": operation(
            "Poll a generation", TAG, operation_id="modelmuxStatus", security=API_KEY,
            parameters=[generation_id],
            responses={"200": answer("The generation.", ref("ModelMuxGeneration")),
                       **errors(SHAPE, read_errors)})},
        "/api/v1/generations/{id}/image": {"get": operation(
            "The generated image's bytes", TAG, operation_id="modelmuxImage",
            security=API_KEY, parameters=[generation_id],
            responses={
                "200": {"description": "The image.", "content": {
                    ctype: {"schema": image} for ctype in IMAGE_TYPES}},
                "302": presigned_redirect(),
                **errors(SHAPE, {**read_errors, 503: STORAGE_503, 404: (
                    "no such generation (code not_found), not ready yet (not_ready), or "
                    "failed (generation_failed).")})})},
    }
    return Part(paths=paths, schemas=schemas)


CREATE_ERRORS = {
    400: "bad input: malformed JSON or multipart, a missing prompt, an unknown field, model, "
         "resolution, aspect ratio or quality, too many reference images, or a Content-Type "
         "other than JSON or multipart.",
    401: "missing or invalid API key.",
    402: "the key's credits do not cover the price.",
    403: "the key may not use this model.",
    409: "a request with this Idempotency-Key is still creating its job.",
    413: "a reference image over limits.max_image_bytes, or the body over "
         "limits.max_body_bytes.",
    415: "a reference file that is not an image.",
    422: "this Idempotency-Key was used with another body.",
    429: "the key's rate or concurrency limit is reached.",
    500: "unexpected server error.",
    503: "the gateway could not store the uploaded images; try again after Retry-After.",
}
