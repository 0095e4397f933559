"""LiteLLM's SDK against the gateway, given only ``api_base`` and ``api_key``:
``python -m tests.clients.python.litellm_client [case ...]`` (describe.py says what
it prints)."""

from __future__ import annotations

import os
from typing import Any

# The model price map ships with the package: no download at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from tests.clients.python.describe import env, item, main

BASE, KEY = env("MUX_BASE_URL"), env("MUX_API_KEY")


def images(response: Any) -> list[dict[str, Any]]:
    return [item(getattr(d, "url", None), getattr(d, "b64_json", None)) for d in response.data]


def generate_gpt() -> Any:
    response = litellm.image_generation(model=env("MUX_MODEL_GPT"), prompt="a red fox",
                                        api_base=BASE, api_key=KEY)
    return {"images": images(response)}


def generate_other() -> Any:
    # "openai/": LiteLLM's prefix for a model on an OpenAI-compatible endpoint.
    response = litellm.image_generation(model=f"openai/{env('MUX_MODEL_OTHER')}",
                                        prompt="a red fox", api_base=BASE, api_key=KEY)
    return {"images": images(response)}


def edit() -> Any:
    with open(env("MUX_IMAGE"), "rb") as image:
        response = litellm.image_edit(model=env("MUX_MODEL_GPT"), image=image,
                                      prompt="the fox as a watercolor", api_base=BASE,
                                      api_key=KEY)
    return {"images": images(response)}


def edit_other() -> Any:
    with open(env("MUX_IMAGE"), "rb") as image:
        response = litellm.image_edit(model=f"openai/{env('MUX_MODEL_OTHER')}", image=image,
                                      prompt="the fox as a watercolor", api_base=BASE,
                                      api_key=KEY)
    return {"images": images(response)}


if __name__ == "__main__":
    main({"image_generation gpt-image": generate_gpt,
          "image_generation other": generate_other,
          "image_edit gpt-image": edit,
          "image_edit other": edit_other})
