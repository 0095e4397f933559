"""Property-based fuzzing of every operation in GET /openapi.json with schemathesis,
against a real gateway on loopback (demo provider, so jobs finish offline).

For each operation: schema-valid requests (positive) and schema-breaking ones
(negative), a bounded number of each. Every answer must be documented (status,
content type, headers, body), never a 5xx, and a request the document forbids must
be refused with a 4xx. The budget is ``FUZZ_EXAMPLES`` per mode per operation.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import HealthCheck, Phase, assume, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from muxproxy.openapi.document import build_document
from muxproxy.settings import load_settings
from tests.support.gateway import KEY_A, base_config, merge, run_gateway, settings_from

ADMIN_TOKEN = "admin-token-0123456789"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
CHECKS: list[Callable[..., Any]] = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_headers_conformance, response_schema_conformance, negative_data_rejection,
    ignored_auth]


def fuzz_config(tmp_path: Path) -> dict[str, Any]:
    cfg = merge(base_config(tmp_path), {
        "admin": {"token": ADMIN_TOKEN},
        # Small limits, so generated data reaches them.
        "limits": {"max_n": 2, "max_prompt_chars": 500, "max_reference_images": 3,
                   "max_body_bytes": 256 * 1024, "max_image_bytes": 64 * 1024},
        "surfaces": {"openai_wait_seconds": 30},
        "providers": {"demo": {"max_concurrency": 1}, "demo-queue": {"max_concurrency": 1}},
    })
    return cfg


def operations() -> list[Any]:
    """Every operation but /mcp's: its bodies are MCP's JSON-RPC messages, which the
    SDK's own client drives in tests/system/test_mcp.py; random objects there only
    exercise the SDK's transport."""
    document = build_document(settings_from(fuzz_config(Path("/fuzz")), 1))
    return [pytest.param(method, path, id=op["operationId"])
            for path, ops in document["paths"].items() for method, op in ops.items()
            if path != "/mcp"]


class NoDns(AbstractResolver):
    """Callback hosts are generated at random: answer at once that none resolves."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        raise OSError(f"no DNS in the fuzz test: {host}")

    async def close(self) -> None:
        pass


def reaches_the_wire(case: schemathesis.Case[Any]) -> bool:
    """False when requests would leave out part of the case: a query parameter whose
    value is an empty list is not sent, so a negative case whose violation is such a
    parameter reaches the gateway as a valid request."""
    return not any(value == [] for value in (case.query or {}).values())


def fuzz(document: Mapping[str, Any], base_url: str, method: str, path: str) -> None:
    schema = schemathesis.openapi.from_dict(dict(document))
    operation = schema.find_operation_by_label(f"{method.upper()} {path}")
    assert operation is not None, (method, path)
    token = ADMIN_TOKEN if path.startswith("/admin/") else KEY_A
    auth = {"Authorization": f"Bearer {token}"}
    spec = document["paths"][path][method]
    modes = [GenerationMode.POSITIVE]
    # A path-only operation has nothing to break: any path segment is a string.
    if spec.get("requestBody") or any(p["in"] != "path" for p in spec.get("parameters", ())):
        modes.append(GenerationMode.NEGATIVE)
    with requests.Session() as session:
        for mode in modes:
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck),
                      phases=[Phase.explicit, Phase.generate, Phase.shrink])
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case[Any]) -> None:
                assume(reaches_the_wire(case))
                response = case.call(base_url=base_url, session=session, headers=auth,
                                     timeout=60)
                case.validate_response(response, checks=CHECKS, headers=auth,
                                       transport_kwargs={"base_url": base_url,
                                                         "session": session,
                                                         "headers": auth})

            run()


def test_document_is_valid_openapi(tmp_path: Path) -> None:
    """Against the OpenAPI 3.1 meta-schema, with the shipped config's models too."""
    for settings_ in (settings_from(fuzz_config(tmp_path), 1),
                      load_settings(Path(__file__).parents[2] / "config.toml", {})):
        schemathesis.openapi.from_dict(build_document(settings_)).validate()


# schemathesis draws from ``random`` inside some of its strategies; Hypothesis warns.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"
                            ":hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize(("method", "path"), operations())
async def test_fuzz_operation(tmp_path: Path, method: str, path: str) -> None:
    async with run_gateway(fuzz_config(tmp_path), resolver=NoDns()) as gateway:
        async with gateway.http.get(gateway.url + "/openapi.json") as resp:
            document = await resp.json()
        await asyncio.to_thread(fuzz, document, gateway.url, method, path)
