"""The MCP server, driven by the SDK's own client over both transports: Streamable
HTTP at the gateway's /mcp, and stdio through ``muxproxy mcp`` relaying to it."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client, MCPError, types
from mcp.shared.dispatcher import ProgressFnT
from PIL import Image

from muxproxy.surfaces import SurfaceName
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, base_config, merge, run_gateway
from tests.support.images import png_bytes
from tests.support.mcp import TRANSPORTS, mcp_client

BROKE = "test-key-broke-0003"
LIMITED = "test-key-limited-0004"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    config = merge(base_config(tmp_path), {
        "surfaces": {"mcp_wait_seconds": 0.3},
        "providers": {"slow": {"kind": "demo", "options": {"delay_seconds": 0.8}},
                      "broken": {"kind": "demo", "options": {"failure_rate": 1.0}}},
        "models": {"demo-slow": {"routes": [{"provider": "slow", "model": "slow"}],
                                 "description": "takes its time"},
                   "demo-fail": {"routes": [{"provider": "broken", "model": "b"}]},
                   "demo-priced": {"routes": [{"provider": "demo", "model": "p"}],
                                   "credits": {"1k": 5, "2k": 9}, "resolutions": ["1k", "2k"]}},
    })
    config["keys"] = [*config["keys"], {"name": "broke", "key": BROKE, "credits": 9},
                      {"name": "limited", "key": LIMITED, "unlimited": True, "rpm": 1}]
    async with run_gateway(config) as running:
        yield running


def texts(result: types.CallToolResult) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def key_id(gateway: RunningGateway, name: str) -> str:
    key = await gateway.state.store.key_named(name)
    assert key is not None
    return key.id


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_list_generate_and_edit_with_an_earlier_generation(
        gateway: RunningGateway, transport: str) -> None:
    async with mcp_client(gateway, KEY_A, transport) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == {"generate_image", "edit_image", "get_generation", "list_models",
                              "get_balance"}
        assert tools["generate_image"].input_schema["required"] == ["prompt"]
        assert "preview" in (tools["generate_image"].description or "")
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["muxproxy://generations/{id}/{index}"]

        notices: list[tuple[float, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            notices.append((progress, message))

        made = await client.call_tool("generate_image", {
            "prompt": "a red fox in snow", "model": "demo-image", "size": "2048x1024"},
            progress_callback=on_progress)
        assert not made.is_error, texts(made)
        facts = made.structured_content
        assert facts["state"] == "completed" and facts["provider"] == "demo/demo-image"
        # The preview is scaled down to fit 1024 px, and the result says so.
        image = next(b for b in made.content if isinstance(b, types.ImageContent))
        with Image.open(io.BytesIO(base64.b64decode(image.data))) as preview:
            assert max(preview.size) == 1024 and preview.size[0] == 2 * preview.size[1]
        assert "scaled down from 2048x1024" in texts(made)
        assert facts["images"][0]["width"] == 2048
        async with gateway.http.get(facts["images"][0]["url"]) as resp:
            assert resp.status == 200
            with Image.open(io.BytesIO(await resp.read())) as full:
                assert full.size == (2048, 1024)
        assert [p for p, _ in notices] == sorted(p for p, _ in notices)
        assert notices[-1][0] == 3 and "completed" in (notices[-1][1] or "")

        job = await gateway.state.store.get_job(facts["id"])
        assert job is not None and job.surface == SurfaceName.MCP

        uri = facts["images"][0]["resource"]
        read = await client.read_resource(uri)
        blob = read.contents[0]
        assert isinstance(blob, types.BlobResourceContents) and blob.mime_type == "image/png"
        stored = await gateway.state.gateway.result_images(job)
        assert base64.b64decode(blob.blob) == stored[0]

        inline = base64.b64encode(png_bytes()).decode()
        edited = await client.call_tool("edit_image", {
            "prompt": "the same fox at night", "model": "demo-image", "images": [uri, inline],
            "mask": inline})
        assert not edited.is_error, texts(edited)
        edit_job = await gateway.state.store.get_job(edited.structured_content["id"])
        assert edit_job is not None and len(edit_job.request.images) == 2
        assert edit_job.request.mask is not None
        assert edit_job.client_params["mask"] == f"<base64 image, {len(inline)} chars>"
        # Recorded as sent, but never with base64 in the table.
        assert edit_job.client_params["images"] == [uri, f"<base64 image, {len(inline)} chars>"]

        other = await client.call_tool("get_generation", {"id": facts["id"]})
        assert other.structured_content["images"][0]["resource"] == uri

    if transport == "stdio":
        return  # the same gateway answers; one child process less
    # Another key sees neither the generation nor its images.
    async with mcp_client(gateway, KEY_B, transport) as client:
        hidden = await client.call_tool("get_generation", {"id": facts["id"]})
        assert hidden.is_error and "not found" in texts(hidden)
        refused = await client.call_tool("edit_image", {"prompt": "x", "images": [uri]})
        assert refused.is_error and "not found" in texts(refused)
        with pytest.raises(MCPError) as unread:
            await client.read_resource(uri)
        assert unread.value.error.code == types.INVALID_PARAMS
        assert unread.value.error.data == {"uri": uri}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refusals_and_failures_are_tool_errors_with_the_gateways_message(
        gateway: RunningGateway, transport: str) -> None:
    async with mcp_client(gateway, KEY_A, transport) as client:
        unknown = await client.call_tool("generate_image", {"prompt": "x", "model": "nope"})
        assert unknown.is_error and texts(unknown) == "unknown model 'nope' (argument: model)"
        failed = await client.call_tool("generate_image", {"prompt": "x", "model": "demo-fail"})
        assert failed.is_error and "failed" in texts(failed)
        assert "Traceback" not in texts(failed)
        wrong = await client.call_tool("generate_image", {"prompt": "x", "colour": "red"})
        assert wrong.is_error and "unknown argument(s): colour" in texts(wrong)
    async with mcp_client(gateway, BROKE, transport) as client:
        paid = await client.call_tool("generate_image", {"prompt": "x", "model": "demo-priced"})
        assert not paid.is_error, texts(paid)
        balance = await client.call_tool("get_balance", {})
        assert balance.structured_content == {"balance": 4, "unlimited": False}
        poor = await client.call_tool("generate_image", {"prompt": "x", "model": "demo-priced"})
        assert poor.is_error
        assert texts(poor) == "insufficient credits: this request costs 5, the balance is 4"
    # Only the paid generation was recorded for the key without credits.
    assert len(await gateway.state.store.list_jobs(await key_id(gateway, "broke"))) == 1
    if transport == "stdio":
        return  # a rate limit is one more refusal relayed as it is
    async with mcp_client(gateway, LIMITED, transport) as client:
        first = await client.call_tool("generate_image", {"prompt": "x", "model": "demo-image"})
        assert not first.is_error
        second = await client.call_tool("generate_image", {"prompt": "x", "model": "demo-image"})
        assert second.is_error and "rate limit of 1 requests per minute" in texts(second)


async def test_a_wrong_key_over_stdio_is_a_tool_error(gateway: RunningGateway) -> None:
    async with mcp_client(gateway, "sk-wrong", "stdio") as client:
        assert len((await client.list_tools()).tools) == 5  # served without the gateway
        result = await client.call_tool("get_balance", {})
        assert result.is_error
        assert texts(result) == "the gateway refused the call: invalid API key"


async def test_a_wrong_key_over_http_is_refused_with_the_gateways_message(
        gateway: RunningGateway) -> None:
    with pytest.raises(BaseExceptionGroup) as caught:  # the SDK's task groups wrap it
        async with mcp_client(gateway, "sk-wrong", "http") as client:
            await client.list_tools()
    errors = _leaves(caught.value)
    assert any(isinstance(e, MCPError) and e.error.message == "invalid API key" and
               e.error.data == {"status": 401, "type": "invalid_api_key"} for e in errors)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cancelled_call_leaves_its_job_recorded_and_a_long_job_is_polled(
        gateway: RunningGateway, transport: str) -> None:
    alpha = await key_id(gateway, "alpha")
    async with mcp_client(gateway, KEY_A, transport) as client:
        started = asyncio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            started.set()  # the job exists once the first notice comes

        call = asyncio.ensure_future(_call(client, on_progress))
        await asyncio.wait_for(started.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        jobs = await gateway.state.store.list_jobs(alpha)
        assert [job.model for job in jobs] == ["demo-slow"]
        ended = await gateway.wait_terminal(jobs[0].id)
        assert ended["state"] == "completed"
        # The session goes on after the cancelled call.
        assert not (await client.call_tool("get_generation", {"id": jobs[0].id})).is_error

        # A job longer than surfaces.mcp_wait_seconds: its id, then get_generation.
        models = await client.call_tool("list_models", {})
        listed = {m["id"]: m for m in models.structured_content["models"]}
        assert listed["demo-priced"]["credits"] == {"1k": 5, "2k": 9}
        assert listed["demo-slow"]["description"] == "takes its time"
        assert listed["demo-priced"]["resolutions"] == ["1k", "2k"]

        pending = await client.call_tool("generate_image", {"prompt": "slow", "model": "demo-slow"})
        assert not pending.is_error
        job_id = pending.structured_content["id"]
        assert pending.structured_content["state"] in ("pending", "processing")
        assert "get_generation" in texts(pending) and job_id in texts(pending)

        await gateway.wait_terminal(job_id)
        done = await client.call_tool("get_generation", {"id": job_id})
        assert done.structured_content["state"] == "completed"
        assert any(isinstance(b, types.ImageContent) for b in done.content)


async def _call(client: Client, progress: ProgressFnT) -> types.CallToolResult:
    return await client.call_tool("generate_image", {"prompt": "slow", "model": "demo-slow"},
                                  progress_callback=progress)


def test_the_gateway_loads_the_mcp_sdk_only_for_its_first_call() -> None:
    # The SDK costs a process about 35 MB: a gateway no agent calls never loads it.
    code = ("import sys, muxproxy.app, muxproxy.cli, muxproxy.surfaces.mcp; "
            "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
