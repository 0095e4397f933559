"""LiteLLM's SDK (``image_generation``, ``image_edit`` with ``api_base``) and
LangChain's ``DallEAPIWrapper`` against a live gateway on the demo provider, each
given only the base URL and the key. They run as child processes of this
interpreter (``python -m tests.clients.python.<client>``): LiteLLM takes seconds to import and both
raise warnings of their own, which are theirs, not the gateway's. They come with
the ``clients`` extra."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.clients.support import PNG_1024, case, landscape_png, need_python_package, run_matrix

ROOT = Path(__file__).parents[2]
PYTHON_PACKAGE = "tests.clients.python"

Results = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def litellm(tmp_path_factory: pytest.TempPathFactory) -> Results:
    need_python_package("litellm", "litellm")
    return run_matrix(tmp_path_factory.mktemp("litellm"),
                      [sys.executable, "-m", f"{PYTHON_PACKAGE}.litellm_client"], ROOT)


@pytest.fixture(scope="module")
def langchain(tmp_path_factory: pytest.TempPathFactory) -> Results:
    need_python_package("langchain_community", "langchain-community")
    return run_matrix(tmp_path_factory.mktemp("langchain"),
                      [sys.executable, "-m", f"{PYTHON_PACKAGE}.langchain_client"], ROOT)


@pytest.mark.parametrize(("name", "kind"), [
    # A GPT Image id answers b64_json by default; LiteLLM reads either.
    ("image_generation gpt-image", "b64_json"),
    ("image_generation other", "url"),
])
def test_litellm_image_generation(litellm: Results, name: str, kind: str) -> None:
    assert case(litellm, name)["images"] == [{"kind": kind, **PNG_1024}]


@pytest.mark.parametrize("name", ["image_edit gpt-image", "image_edit other"])
def test_litellm_image_edit(litellm: Results, name: str) -> None:
    # Edits answer b64_json on every model, in the input's shape.
    [image] = case(litellm, name)["images"]
    assert image["kind"] == "b64_json" and landscape_png(image)


def test_langchain_dalle_wrapper(langchain: Results) -> None:
    # run() hands back the image URLs: signed gateway links that download.
    assert case(langchain, "DallEAPIWrapper run")["images"] == [{"kind": "url", **PNG_1024}]
    assert case(langchain, "DallEAPIWrapper run n=2")["images"] == [
        {"kind": "url", "format": "png", "width": 1536, "height": 1024}] * 2
