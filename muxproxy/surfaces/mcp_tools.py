"""The MCP server's tools and resources, as clients see them: names, descriptions and
JSON schemas, written out by hand so they are exactly what is on the wire. Both
transports serve these: the gateway's ``/mcp`` (``surfaces/mcp.py``) and
``muxproxy mcp`` on stdio (``mcp_stdio.py``), which forwards to a gateway's ``/mcp``."""

from __future__ import annotations

from typing import Any

from mcp import types

INSTRUCTIONS = (
    "muxproxy generates images with the models its gateway routes. Call list_models to "
    "see models and prices, generate_image or edit_image to make images, get_generation "
    "to fetch a generation that was still running, get_balance for the credits left.")
# The URI of one result image of one generation; ``index`` counts from 0.
RESOURCE_TEMPLATE = "muxproxy://generations/{id}/{index}"
RESOURCE_PREFIX = "muxproxy://generations/"
# Previews returned as image content fit in this box: Claude and other MCP clients
# refuse or shrink larger images, and a tool result must stay well under ~1 MB.
PREVIEW_MAX_SIDE = 1024

_OPTIONS: dict[str, Any] = {
    "model": {"type": "string", "description":
              "Model id, from list_models. Omitted: the gateway's default model."},
    "size": {"type": "string", "description":
             "Exact size as WIDTHxHEIGHT, e.g. 1024x1024. Use this or aspect_ratio and "
             "resolution."},
    "aspect_ratio": {"type": "string",
                     "description": "Aspect ratio, e.g. 1:1, 16:9, 9:16, 4:3."},
    "resolution": {"type": "string", "enum": ["1k", "2k", "4k"],
                   "description": "Resolution tier: 1k (about 1 megapixel), 2k or 4k."},
    "quality": {"type": "string", "enum": ["auto", "low", "medium", "high"],
                "description": "Quality tier, for models that price or render by quality."},
    "n": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1,
          "description": "How many images to make."},
}
_PROMPT = {"type": "string", "minLength": 1, "description": "What the image should show."}
_REFERENCE = {"type": "string", "description":
              "An https:// URL, a base64 image (optionally a data: URI), or the resource "
              "URI of an earlier generation's image: muxproxy://generations/{id}/{index}."}
_ID = {"type": "string", "minLength": 1,
       "description": "The generation's id, as generate_image or edit_image returned it."}
_BOX = f"{PREVIEW_MAX_SIDE}x{PREVIEW_MAX_SIDE}"
_AFTER = ("It waits for the image, sending progress notifications, and returns each "
          f"image as a preview scaled down to fit {_BOX} pixels (so MCP clients "
          "accept it), a link to the full-size image and its resource URI, and the "
          "generation id. A job that takes longer than the gateway's wait is returned "
          "with its id: call get_generation with it later. Each call is billed to "
          "your API key's credits.")


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


TOOLS: tuple[types.Tool, ...] = (
    types.Tool(
        name="generate_image",
        title="Generate an image",
        description="Generate images from a text prompt with any model the gateway "
                    "routes. " + _AFTER,
        input_schema=_schema({"prompt": _PROMPT, **_OPTIONS}, ["prompt"]),
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                          idempotent_hint=False, open_world_hint=True)),
    types.Tool(
        name="edit_image",
        title="Edit an image",
        description="Make new images from reference images and a prompt (edit, restyle, "
                    "combine). References are URLs, base64 images, or resources of "
                    "earlier generations (muxproxy://generations/{id}/{index}); an "
                    "optional mask marks the area to change. " + _AFTER,
        input_schema=_schema({
            "prompt": _PROMPT,
            "images": {"type": "array", "items": _REFERENCE, "minItems": 1,
                       "description": "Reference images, in order (image 1, image 2...)."},
            "mask": {**_REFERENCE, "description":
                     "Optional mask for the first image (transparent where to edit): a "
                     "URL, base64, or muxproxy:// resource URI."},
            **_OPTIONS}, ["prompt", "images"]),
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                          idempotent_hint=False, open_world_hint=True)),
    types.Tool(
        name="get_generation",
        title="Get a generation",
        description="The state of an earlier generation (pending, processing, completed "
                    "or failed), with its images (previews, full-size links and resource "
                    "URIs) once it has completed, or its error once it has failed. Free.",
        input_schema=_schema({"id": _ID}, ["id"]),
        annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True,
                                          open_world_hint=False)),
    types.Tool(
        name="list_models",
        title="List image models",
        description="The image models this API key may use: id, description, allowed "
                    "resolutions and aspect ratios, and price in credits (per image, by "
                    "resolution or quality where the price depends on them). Free.",
        input_schema=_schema({}, []),
        annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True,
                                          open_world_hint=False)),
    types.Tool(
        name="get_balance",
        title="Get the credit balance",
        description="This API key's credit balance, and whether it is unlimited. Free.",
        input_schema=_schema({}, []),
        annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True,
                                          open_world_hint=False)),
)

RESOURCE_TEMPLATES: tuple[types.ResourceTemplate, ...] = (
    types.ResourceTemplate(
        name="generation-image", title="A generated image", uri_template=RESOURCE_TEMPLATE,
        description="One full-size result image of a generation; index counts from 0. "
                    "Pass the URI to edit_image to use the image as a reference."),
)


def resource_uri(job_id: str, index: int) -> str:
    return f"{RESOURCE_PREFIX}{job_id}/{index}"


def parse_resource_uri(uri: str) -> tuple[str, int] | None:
    """``(job id, index)`` of a generation image's URI, or None if it is not one."""
    if not uri.startswith(RESOURCE_PREFIX):
        return None
    job_id, slash, index = uri[len(RESOURCE_PREFIX):].partition("/")
    if not job_id or not slash or not index.isdigit() or len(index) > 4:
        return None
    return job_id, int(index)
