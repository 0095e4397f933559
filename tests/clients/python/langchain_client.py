"""LangChain's ``DallEAPIWrapper`` against the gateway, given only the base URL and
the key (and the model): ``python -m tests.clients.python.langchain_client [case ...]``."""

from __future__ import annotations

from typing import Any

from langchain_community.utilities.dalle_image_generator import DallEAPIWrapper

from tests.clients.python.describe import env, item, main


def wrapper(**options: Any) -> DallEAPIWrapper:
    return DallEAPIWrapper(base_url=env("MUX_BASE_URL"), api_key=env("MUX_API_KEY"),
                           model=env("MUX_MODEL_OTHER"), **options)


def run() -> Any:
    # run() answers the image URLs, one per line.
    urls = wrapper().run("a red fox in the snow").split("\n")
    return {"images": [item(url, None) for url in urls]}


def run_two() -> Any:
    urls = wrapper(n=2, size="1536x1024").run("two red foxes").split("\n")
    return {"images": [item(url, None) for url in urls]}


if __name__ == "__main__":
    main({"DallEAPIWrapper run": run, "DallEAPIWrapper run n=2": run_two})
