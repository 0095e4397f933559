"""openai-node and the Vercel AI SDK (``ai`` 6 with ``@ai-sdk/openai`` 3) against a
live gateway on the demo provider, from the packages ``npm ci`` installs in
``tests/clients/node`` (cases in ``cases.mjs``). Each client gets only the base URL
and the key; the Vercel SDK on a ``gpt-image-*`` id (it sends no
``response_format``) and on one that is not (it asks for ``b64_json``), with and
without reference images (then it calls the edits endpoint, multipart)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.clients.support import (
    NODE_DIR,
    PNG_1024,
    case,
    landscape_png,
    need_node,
    run_matrix,
)

Results = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Results:
    binary = need_node()
    tmp_path: Path = tmp_path_factory.mktemp("node-clients")
    return run_matrix(tmp_path, [binary, "cases.mjs"], NODE_DIR)


def test_openai_node_generate(node: Results) -> None:
    result = case(node, "openai-node generate")
    # A model that is not GPT Image answers with a link unless asked otherwise.
    assert result["images"] == [{"kind": "url", **PNG_1024}]
    assert abs(result["created"] - time.time()) < 600


def test_openai_node_generate_gpt_image(node: Results) -> None:
    result = case(node, "openai-node generate gpt-image")
    # GPT Image ids answer b64_json by default, as OpenAI does.
    assert result["images"] == [{"kind": "b64_json", "format": "png", "width": 1024,
                                 "height": 1536}]
    assert result["size"] == "1024x1536"


def test_openai_node_edit_with_to_file(node: Results) -> None:
    [image] = case(node, "openai-node edit toFile")["images"]
    assert image["kind"] == "b64_json" and landscape_png(image)


def test_openai_node_edit_with_two_files(node: Results) -> None:
    images = case(node, "openai-node edit toFile two images")["images"]
    assert [i["kind"] for i in images] == ["b64_json"] * 2
    assert all(landscape_png(i) for i in images)


@pytest.mark.parametrize(("name", "kind"), [("openai-node generate stream", "image_generation"),
                                            ("openai-node edit stream", "image_edit")])
def test_openai_node_streams(node: Results, name: str, kind: str) -> None:
    events = case(node, name)["events"]
    assert events, "no event"
    *partials, final = events
    assert all(e["type"] == f"{kind}.partial_image" for e in partials)
    assert final["type"] == f"{kind}.completed"
    assert (final["format"], final["output_format"]) == ("png", "png")
    assert final["size"] == f"{final['width']}x{final['height']}"
    if kind == "image_edit":
        assert landscape_png(final)
    else:
        assert final["size"] == "1024x1024"
    assert "total_tokens" in final["usage"]


def test_openai_node_error(node: Results) -> None:
    assert case(node, "openai-node error") == {
        "name": "BadRequestError", "status": 400, "code": "invalid_request", "param": "model",
        "type": "invalid_request_error"}


@pytest.mark.parametrize("name", ["ai-sdk generateImage gpt-image", "ai-sdk generateImage other"])
def test_vercel_ai_sdk_generate_image(node: Results, name: str) -> None:
    result = case(node, name)
    assert result["images"] == [PNG_1024]
    assert result["mediaType"] == "image/png"
    assert result["warnings"] == []


@pytest.mark.parametrize("name", ["ai-sdk generateImage gpt-image references",
                                  "ai-sdk generateImage other references"])
def test_vercel_ai_sdk_generate_image_with_references(node: Results, name: str) -> None:
    # Sent to the edits endpoint, which answers b64_json whatever the model.
    result = case(node, name)
    [image] = result["images"]
    assert landscape_png(image)
    assert result["mediaType"] == "image/png"
