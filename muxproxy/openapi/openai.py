"""The OpenAI-compatible images API (``surfaces/openai.py``): the calls wait for
the job, or stream it as server-sent events; errors are
``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

from muxproxy import validation
from muxproxy.openapi import fields
from muxproxy.openapi.common import (
    API_KEY,
    IDEMPOTENCY_KEY,
    Part,
    Schema,
    answer,
    as_text,
    choice,
    errors,
    integer,
    json_body,
    nullable,
    obj,
    operation,
    path_param,
    ref,
    string,
    url,
    whole_number,
)
from muxproxy.settings import Settings
from muxproxy.surfaces import openai as surface

TAG = "OpenAI-compatible API"
SHAPE = "OpenAIError"
BINARY: Schema = {"type": "string", "format": "binary"}


def _common_fields(settings: Settings) -> dict[str, Schema]:
    """The fields of both calls, as JSON values."""
    limits = settings.limits
    props: dict[str, Schema] = {
        "model": fields.model(settings, required=False),
        "prompt": fields.prompt(limits),
        "n": nullable(whole_number(1, limits.max_n, "How many images (default 1).")),
        "size": fields.size(),
        "quality": fields.quality(),
        "response_format": nullable(choice(["url", "b64_json"], (
            "url: signed links; b64_json: the bytes inline. Left out: b64_json for edits "
            "and for model ids starting gpt-image- or chatgpt-image- (as OpenAI answers), "
            "else the model's response_format setting, else url."))),
        "output_format": fields.output_format(),
        "output_compression": nullable(whole_number(0, 100, "0-100, for jpeg and webp.")),
        "user": nullable(string(maxLength=256)),
        "safety_identifier": nullable(string(maxLength=256)),
        "stream": {"enum": [True, False, "true", "false", None],
                   "description": "true: answer with server-sent events (text/event-stream) "
                                  "in OpenAI's image streaming shapes."},
        "partial_images": nullable(whole_number(
            0, 3, "With stream: previews to send before the image (default 0). Only an "
                  "OpenAI upstream streams them; others send the completed event alone.")),
        # Gateway extensions (the SDKs' extra_body).
        "aspect_ratio": fields.aspect_ratio(),
        "resolution": fields.resolution(),
        "seed": nullable(whole_number(0, 2**32 - 1, "Extension: a seed, for providers that "
                                                    "take one (others refuse it).")),
    }
    for name, allowed in surface.CHOICES.items():
        if name != "input_fidelity":
            props[name] = nullable(choice(allowed))
    return props


def generate_request(settings: Settings) -> Schema:
    return obj(_common_fields(settings), ["prompt"],
               description="model defaults to surfaces.default_model (or the first "
                           "configured model). null is the same as leaving a field out.")


def edit_json_request(settings: Settings) -> Schema:
    image = obj({"image_url": {"anyOf": [
        url("An http(s) URL to the image."),
        string("The image as a data URI (data:image/png;base64,...).", pattern="^data:"),
    ]}}, ["image_url"])
    return obj({
        **_common_fields(settings),
        "input_fidelity": nullable(choice(surface.CHOICES["input_fidelity"])),
        "images": {"type": "array", "items": image, "minItems": 1,
                   "maxItems": settings.limits.max_reference_images},
        "mask": nullable(image),
    }, ["prompt", "images"])


def edit_form_request(settings: Settings) -> Schema:
    """Multipart: the same fields as text parts, images as file parts."""
    text = {name: as_text(schema) for name, schema in _common_fields(settings).items()}
    text["n"] = string("How many images (default 1).", pattern=validation.DIGITS_PATTERN)
    text["output_compression"] = string("0-100.", pattern=validation.DIGITS_PATTERN)
    text["partial_images"] = string("0-3.", pattern="^[0-3]$")
    text["seed"] = string("A whole number.", pattern=validation.DIGITS_PATTERN)
    text["stream"] = choice(["true", "false"])
    text["input_fidelity"] = choice(surface.CHOICES["input_fidelity"])
    count = settings.limits.max_reference_images
    schema = obj({
        **text,
        "image": {"anyOf": [BINARY, {"type": "array", "items": BINARY, "maxItems": count}],
                  "description": "The image to edit (judged by its bytes); repeat for more."},
        "image[]": {"type": "array", "items": BINARY, "maxItems": count},
        "mask": BINARY,
    }, ["prompt"], description=(
        "Numbers and booleans as text, the way the SDKs send them. Send at least one image, "
        "as one or more 'image' or 'image[]' file parts."))
    schema["anyOf"] = [{"required": ["image"]}, {"required": ["image[]"]}]
    return schema


def usage() -> Schema:
    return obj({
        "input_tokens": integer(), "output_tokens": integer(), "total_tokens": integer(),
        "prompt_tokens": integer(), "completion_tokens": integer(),
        "input_tokens_details": obj({"image_tokens": integer(), "text_tokens": integer()},
                                    ["image_tokens", "text_tokens"]),
        "credits": integer("The job's price."),
    }, ["input_tokens", "output_tokens", "total_tokens", "input_tokens_details", "credits"])


def images_response() -> Schema:
    item = obj({"url": string("A signed link to the image.", format="uri"),
                "b64_json": string("The image, base64."),
                "revised_prompt": string()})
    return obj({
        "created": integer("Unix seconds."),
        "data": {"type": "array", "items": item},
        "usage": ref("OpenAIUsage"),
        "output_format": choice(["png", "jpeg", "webp", "gif"]),
        "size": string(pattern="^[0-9]+x[0-9]+$"),
        "quality": choice(["low", "medium", "high", "xhigh", "max"]),
        "background": choice(["transparent", "opaque"]),
    }, ["created", "data", "usage", "output_format"])


def stream_event() -> Schema:
    """One event's data (the ``data:`` line of each event in the stream)."""
    fields_: dict[str, Schema] = {
        "b64_json": string("The image (or a preview), base64."),
        "created_at": integer("Unix seconds."),
        "size": string(), "quality": choice(["low", "medium", "high", "xhigh", "max", "auto"]),
        "background": choice(["transparent", "opaque", "auto"]),
        "output_format": choice(["png", "jpeg", "webp", "gif"]),
    }
    common = ["type", "b64_json", "created_at", "size", "quality", "background",
              "output_format"]
    kinds = ("image_generation", "image_edit")
    partial = obj({"type": choice([f"{k}.partial_image" for k in kinds]),
                   "partial_image_index": integer(), **fields_},
                  [*common, "partial_image_index"])
    completed = obj({"type": choice([f"{k}.completed" for k in kinds]), **fields_,
                     "usage": ref("OpenAIUsage")}, [*common, "usage"])
    error = obj({"error": ref(SHAPE + "Detail")}, ["error"])
    return {"description": "Events: event: <type> then data: <this JSON>. Previews "
                           "(partial_image), one completed per image, or error.",
            "oneOf": [partial, completed, error]}


JOB_HEADER = {surface.JOB_HEADER: {
    "description": "The job's id: poll it on the native task API.", "required": False,
    "schema": string()}}
NO_RETRY = {"x-should-retry": {"description": "false: the job ran; a retry starts another.",
                               "required": True, "schema": {"const": "false"}}}


def _wait_errors() -> dict[str, Any]:
    out = errors(SHAPE, CREATE_ERRORS)
    for status, reason in ((502, "the job failed upstream (code is its failure code)."),
                           (504, "the wait ran out; the job goes on (poll the id).")):
        out[str(status)] = answer(reason, ref(SHAPE), headers={**JOB_HEADER, **NO_RETRY})
    out["400"]["headers"].update(JOB_HEADER)
    return out


def part(settings: Settings) -> Part:
    schemas: dict[str, Schema] = {
        SHAPE + "Detail": obj({"message": string(), "type": string(),
                               "param": nullable(string()), "code": string()},
                              ["message", "type", "param", "code"]),
        SHAPE: obj({"error": ref(SHAPE + "Detail")}, ["error"]),
        "OpenAIUsage": usage(),
        "OpenAIImageStreamEvent": stream_event(),
        "OpenAIImagesRequest": generate_request(settings),
        "OpenAIEditJSONRequest": edit_json_request(settings),
        "OpenAIEditFormRequest": edit_form_request(settings),
        "OpenAIImagesResponse": images_response(),
        "OpenAIModel": obj({"id": string(), "object": {"const": "model"},
                            "created": integer(), "owned_by": string(),
                            "description": string()},
                           ["id", "object", "created", "owned_by"]),
    }
    schemas["OpenAIModelList"] = obj({"object": {"const": "list"},
                                      "data": {"type": "array", "items": ref("OpenAIModel")}},
                                     ["object", "data"])
    done = answer("The job is done: its images.", ref("OpenAIImagesResponse"),
                  headers=JOB_HEADER)
    kinds = ("image_generation", "image_edit")
    done["content"]["text/event-stream"] = {"schema": obj({
        "event": choice([*(f"{k}.{e}" for k in kinds for e in ("partial_image", "completed")),
                         "error"]),
        "data": string("An OpenAIImageStreamEvent as JSON.",
                       contentMediaType="application/json",
                       contentSchema=ref("OpenAIImageStreamEvent")),
    }, ["event", "data"], closed=False, description=(
        "With stream: true, server-sent events (one per image, after any previews). A "
        "failure after the stream began is an error event."))}
    paths: dict[str, dict[str, Any]] = {
        "/v1/images/generations": {"post": operation(
            "Generate images (waits for them, or streams them)", TAG, operation_id="openaiGenerate",
            security=API_KEY, parameters=[IDEMPOTENCY_KEY],
            body=json_body(ref("OpenAIImagesRequest")),
            responses={"200": done, **_wait_errors()})},
        "/v1/images/edits": {"post": operation(
            "Edit images (waits for them, or streams them)", TAG, operation_id="openaiEdit",
            security=API_KEY, parameters=[IDEMPOTENCY_KEY],
            body={"required": True, "content": {
                "multipart/form-data": {"schema": ref("OpenAIEditFormRequest")},
                "application/json": {"schema": ref("OpenAIEditJSONRequest")}}},
            responses={"200": done, **_wait_errors()})},
        "/v1/models": {"get": operation(
            "List the models", TAG, operation_id="openaiListModels", security=API_KEY,
            responses={"200": answer("The configured models.", ref("OpenAIModelList")),
                       **errors(SHAPE, {401: "missing or invalid API key.",
                                        500: "unexpected server error."})})},
        "/v1/models/{model}": {"get": operation(
            "One model", TAG, operation_id="openaiGetModel", security=API_KEY,
            parameters=[path_param("model", "A model id (it may contain '/').")],
            responses={"200": answer("The model.", ref("OpenAIModel")),
                       **errors(SHAPE, {401: "missing or invalid API key.",
                                        404: "no such model (code model_not_found).",
                                        500: "unexpected server error."})})},
    }
    return Part(paths=paths, schemas=schemas)


CREATE_ERRORS = {
    400: "an invalid or missing field (param names it), an unknown model, a file that is not "
         "an image, a wrong Content-Type, a reference URL that is not public or could not be "
         "fetched, or a job the provider refused (code says why).",
    401: "missing or invalid API key.",
    402: "the key's credits do not cover the price.",
    403: "the key may not use this model.",
    409: "a request with this Idempotency-Key is still creating its job.",
    413: "the body is over limits.max_body_bytes, or an image over limits.max_image_bytes.",
    422: "this Idempotency-Key was used with another body.",
    429: "the key's rate or concurrency limit is reached.",
    500: "unexpected server error.",
    503: "the gateway could not store the uploaded images; try again after Retry-After.",
}
