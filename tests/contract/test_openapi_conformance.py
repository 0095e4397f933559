"""The OpenAPI document stays true: real answers from a real gateway, success and
error cases on every operation, checked against GET /openapi.json (status, content
type, headers, body), and every request the gateway accepted checked against the
document's request schema."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from PIL import Image
from starlette.routing import Mount

from tests.support.gateway import KEY_A, RunningGateway, base_config, merge, run_gateway
from tests.support.openapi import Contract
from tests.support.webhooks import LOOPBACK, Receiver, until

ADMIN_TOKEN = "admin-token-0123456789"
POOR_KEY = "test-key-poor-0003"
NARROW_KEY = "test-key-narrow-0004"
SLOW_KEY = "test-key-slow-00005"


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


PNG_B64 = base64.b64encode(png()).decode()


def config(tmp_path: Path) -> dict[str, Any]:
    cfg = merge(base_config(tmp_path), {
        **LOOPBACK,
        "admin": {"token": ADMIN_TOKEN},
        "limits": {"max_body_bytes": 200_000, "max_image_bytes": 50_000},
        "providers": {"failing": {"kind": "demo", "options": {"failure_rate": 1.0}},
                      "slow": {"kind": "demo", "options": {"delay_seconds": 0.6}}},
    })
    cfg["models"] = {
        **cfg["models"],
        "demo-priced": {"routes": [{"provider": "demo", "model": "p"}], "credits": 5},
        "demo-fail": {"routes": [{"provider": "failing", "model": "f"}]},
        "demo-slow": {"routes": [{"provider": "slow", "model": "s"}]},
    }
    cfg["keys"] = [*cfg["keys"],
                   {"name": "poor", "key": POOR_KEY},
                   {"name": "narrow", "key": NARROW_KEY, "unlimited": True,
                    "models": ["demo-image"]},
                   {"name": "slow", "key": SLOW_KEY, "unlimited": True, "rpm": 1}]
    return cfg


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]


@dataclass
class Api:
    gateway: RunningGateway
    contract: Contract

    async def call(self, method: str, template: str, path: str | None = None, *,
                   key: str | None = KEY_A, admin: bool = False,
                   headers: Mapping[str, str] | None = None, **kw: Any) -> Reply:
        hdrs = {}
        if admin:
            hdrs["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        elif key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        hdrs.update(headers or {})
        url = self.gateway.url + (path or template)
        async with self.gateway.http.request(method, url, headers=hdrs, **kw) as resp:
            raw = await resp.read()
            body = self.contract.check_response(method, template, resp.status, resp.headers,
                                                raw)
            return Reply(resp.status, body, resp.headers)

    async def accepted(self, method: str, template: str, body: Any, *,
                       path: str | None = None, **kw: Any) -> Reply:
        """A JSON request that must succeed, and must be one the document allows."""
        self.contract.check_request(method, template, body)
        reply = await self.call(method, template, path, json=body, **kw)
        assert reply.status in (200, 201), reply.body
        return reply

    async def terminal(self, task_id: str) -> dict[str, Any]:
        return await self.gateway.wait_terminal(task_id)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with run_gateway(config(tmp_path)) as gateway:
        async with gateway.http.get(gateway.url + "/openapi.json") as resp:
            assert resp.status == 200
            document = await resp.json()
        yield Api(gateway, Contract(document))


def served_routes(routes: list[Any]) -> list[Any]:
    """The routes inside each surface's mount (they keep their full paths)."""
    return [inner for route in routes
            for inner in (served_routes(route.routes) if isinstance(route, Mount) else [route])]


async def test_document_lists_every_route(api: Api) -> None:
    """Each route the app serves is documented with each of its methods (but the
    console's pages), and the document holds no path the app does not serve."""
    app: Any = api.gateway.server.config.loaded_app
    while not hasattr(app, "routes"):
        app = app.app
    served: dict[str, set[str]] = {}
    # The console serves pages to a browser, not the HTTP API: it is not documented.
    console = api.gateway.settings.console.path
    for route in served_routes(app.routes):
        if route.path == console or route.path.startswith(console + "/"):
            continue
        template = route.path.replace(":path}", "}")
        served.setdefault(template, set()).update(m.lower() for m in route.methods or ())
    documented = {path: set(ops) for path, ops in api.contract.document["paths"].items()}
    assert set(served) == set(documented)
    for path, methods in served.items():
        # Starlette answers HEAD for every GET route; only /files documents it.
        assert methods - {"head"} == documented[path] - {"head"}, path
    reply = await api.call("GET", "/openapi.json", key=None)
    assert reply.body["openapi"] == "3.1.0"
    assert reply.body["servers"] == [{"url": api.gateway.url}]


async def test_other_methods_are_405_with_allow(api: Api) -> None:
    """A method the document does not list for a path is a 405 naming, in Allow,
    exactly the methods it does list, in the path's surface error shape."""
    shapes = {"/v1/": "OpenAIError", "/api/v1/generations": "ModelMuxError",
              "/admin/": "AdminError", "/mcp": "McpError"}
    for template, ops in api.contract.document["paths"].items():
        documented = {m.upper() for m in ops} | ({"HEAD"} if "get" in ops else set())
        path = re.sub(r"\{[^}]+\}", "x", template)
        shape = next((s for p, s in shapes.items() if path.startswith(p)), "NativeError")
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - documented:
            async with api.gateway.http.request(method, api.gateway.url + path) as resp:
                assert resp.status == 405, (method, path)
                assert set(resp.headers["Allow"].split(", ")) == documented, (method, path)
                problems = api.contract.errors(api.contract.component(shape),
                                               await resp.json())
            assert not problems, (method, path, problems)


async def test_operations(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        reply = await api.call("GET", path, key=None)
        assert reply.status == 200
    assert b"muxproxy_http_requests_total" in reply.body


async def test_native_task_api(api: Api) -> None:
    url = "/api/v1/images/generations"
    async with Receiver() as receiver:
        created = await api.accepted("POST", url, {
            "model": "demo-image", "prompt": "a fox 🦊 שלום e\u0301", "n": 2,
            "size": "256x128", "output_format": "webp", "image_base64": [PNG_B64],
            "mask_base64": f"data:image/png;base64,{PNG_B64}",
            "callback_url": receiver.url()})
        task_id = created.body["data"]["taskId"]
        await api.terminal(task_id)
        polled = await api.call("GET", url, params={"task_id": task_id})
        assert polled.body["data"]["state"] == "completed"
        assert len(polled.body["data"]["resultUrls"]) == 2
        await receiver.wait_hits(1)
        failed = await api.accepted("POST", url, {"model": "demo-fail", "prompt": "x",
                                                  "aspect_ratio": "16:9",
                                                  "resolution": "1K"})
        await api.terminal(failed.body["data"]["taskId"])
        reply = await api.call("GET", url, params={"task_id": failed.body["data"]["taskId"]})
        assert reply.body["data"]["failCode"] == "demo_failure"

    cases: list[tuple[dict[str, Any], int]] = [
        ({"json": {"model": "demo-image"}}, 400),
        ({"json": {"model": "demo-image", "prompt": "x"}, "key": "wrong-key-000"}, 401),
        ({"json": {"model": "demo-priced", "prompt": "x"}, "key": POOR_KEY}, 402),
        ({"json": {"model": "demo-slow", "prompt": "x"}, "key": NARROW_KEY}, 403),
        ({"data": b"x" * 200_001, "headers": {"Content-Type": "application/json"}}, 413),
        ({"data": b"model=x", "headers": {"Content-Type": "text/plain"}}, 415),
        ({"json": {"model": "demo-image", "prompt": "x", "image_base64": "aGVsbG8="}}, 415),
    ]
    for kwargs, status in cases:
        reply = await api.call("POST", url, **kwargs)
        assert reply.status == status, (kwargs, reply.body)
    for params, status in [({}, 400), ({"task_id": "nope"}, 404)]:
        assert (await api.call("GET", url, params=params)).status == status
    assert (await api.call("GET", url, params={"task_id": task_id}, key=None)).status == 401


async def test_rate_limit_and_idempotency(api: Api) -> None:
    url = "/api/v1/images/generations"
    body = {"model": "demo-image", "prompt": "once"}
    await api.accepted("POST", url, body, key=SLOW_KEY)
    limited = await api.call("POST", url, json=body, key=SLOW_KEY)
    assert limited.status == 429
    first = await api.accepted("POST", url, body, headers={"Idempotency-Key": "k1"})
    again = await api.call("POST", url, json=body, headers={"Idempotency-Key": "k1"})
    assert again.body["data"]["taskId"] == first.body["data"]["taskId"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await api.call("POST", url, json={**body, "n": 2},
                           headers={"Idempotency-Key": "k1"})
    assert other.status == 422
    assert (await api.call("POST", url, json=body,
                           headers={"Idempotency-Key": ""})).status == 400


async def test_webhook_endpoints(api: Api) -> None:
    async with Receiver() as receiver:
        slow = await api.accepted("POST", "/api/v1/images/generations", {
            "model": "demo-slow", "prompt": "slow", "callback_url": receiver.url()})
        slow_id = slow.body["data"]["taskId"]
        waiting = await api.call("GET", "/api/v1/webhooks/deliveries",
                                 params={"task_id": slow_id})
        assert waiting.body["data"]["status"] == "awaiting_task"
        early = await api.call("POST", "/api/v1/webhooks/redeliver",
                               json={"task_id": slow_id})
        assert early.status == 409
        await api.terminal(slow_id)
        await receiver.wait_hits(1)
        sent = await api.call("GET", "/api/v1/webhooks/deliveries",
                              params={"task_id": slow_id})
        assert sent.body["data"]["attempts"], sent.body
        await api.accepted("POST", "/api/v1/webhooks/redeliver", {"task_id": slow_id})
        await receiver.wait_hits(2)
        registry = api.gateway.state.metrics.registry
        await until(lambda: registry.get_sample_value("muxproxy_webhooks_in_flight") == 0)
        again = await api.call("POST", "/api/v1/webhooks/redeliver",
                               params={"task_id": slow_id})
        assert again.status == 200
    plain = await api.accepted("POST", "/api/v1/images/generations",
                               {"model": "demo-image", "prompt": "no hook"})
    hook_cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/api/v1/webhooks/deliveries", {}, 400),
        ("GET", "/api/v1/webhooks/deliveries",
         {"params": {"task_id": plain.body["data"]["taskId"]}}, 404),
        ("POST", "/api/v1/webhooks/redeliver", {"json": {}}, 400),
        ("POST", "/api/v1/webhooks/redeliver", {"json": {"task_id": "x" * 5000}}, 413),
        ("POST", "/api/v1/webhooks/redeliver", {"json": {"task_id": "nope"}}, 404),
        ("GET", "/api/v1/webhooks/deliveries", {"key": None}, 401),
    ]
    for method, path, kwargs, status in hook_cases:
        reply = await api.call(method, path, **kwargs)
        assert reply.status == status, (path, kwargs, reply.body)
    created = await api.call("POST", "/api/v1/webhooks/secret")
    assert created.body["data"]["secret"].startswith("whsec_")
    shown = await api.call("GET", "/api/v1/webhooks/secret")
    assert shown.body["data"]["enabled"] is True
    gone = await api.call("DELETE", "/api/v1/webhooks/secret")
    assert gone.body["data"] == {"enabled": False, "createTime": None}
    assert (await api.call("GET", "/api/v1/webhooks/secret", key=None)).status == 401


async def test_openai_surface(api: Api) -> None:
    gen = "/v1/images/generations"
    reply = await api.accepted("POST", gen, {"model": "demo-image", "prompt": "a lake",
                                             "size": "128x128", "quality": "high",
                                             "response_format": "b64_json",
                                             "background": "opaque", "stream": False})
    assert base64.b64decode(reply.body["data"][0]["b64_json"])[:4] == b"\x89PNG"
    reply = await api.accepted("POST", gen, {"prompt": "default model", "n": "2"})
    assert len(reply.body["data"]) == 2
    edit_json = {"model": "demo-image", "prompt": "edit",
                 "images": [{"image_url": f"data:image/png;base64,{PNG_B64}"}],
                 "mask": {"image_url": f"data:image/png;base64,{PNG_B64}"}}
    await api.accepted("POST", "/v1/images/edits", edit_json)
    form = aiohttp.FormData()
    form.add_field("model", "demo-image")
    form.add_field("prompt", "edit by form")
    form.add_field("n", "1")
    form.add_field("image[]", png(), filename="a.png", content_type="image/png")
    form.add_field("image[]", png(), filename="b.png", content_type="image/png")
    form.add_field("mask", png(), filename="m.png", content_type="image/png")
    reply = await api.call("POST", "/v1/images/edits", data=form)
    assert reply.status == 200, reply.body
    failed = await api.call("POST", gen, json={"model": "demo-fail", "prompt": "x"})
    assert failed.status == 502 and failed.headers["x-should-retry"] == "false"
    cases: list[tuple[dict[str, Any], int]] = [
        ({"json": {"model": "demo-image", "prompt": "x", "style": "loud"}}, 400),
        ({"json": {"model": "demo-image", "prompt": "x", "stream": True}}, 200),
        ({"json": {"model": "demo-image", "prompt": "x", "partial_images": 9}}, 400),
        ({"data": b"{}", "headers": {"Content-Type": "text/plain"}}, 400),
        ({"json": {"prompt": "x"}, "key": None}, 401),
        ({"json": {"model": "demo-priced", "prompt": "x"}, "key": POOR_KEY}, 402),
        ({"json": {"model": "demo-slow", "prompt": "x"}, "key": NARROW_KEY}, 403),
        ({"data": b"x" * 200_001, "headers": {"Content-Type": "application/json"}}, 413),
    ]
    for kwargs, status in cases:
        reply = await api.call("POST", gen, **kwargs)
        assert reply.status == status, (kwargs, reply.body)
    not_image = aiohttp.FormData()
    not_image.add_field("prompt", "x")
    not_image.add_field("image", b"GIF88 not really", filename="a.gif")
    assert (await api.call("POST", "/v1/images/edits", data=not_image)).status == 400
    listed = await api.call("GET", "/v1/models")
    assert "grok-image/grok-4.2-image" in {m["id"] for m in listed.body["data"]}
    one = await api.call("GET", "/v1/models/{model}", "/v1/models/grok-image/grok-4.2-image")
    assert one.body["id"] == "grok-image/grok-4.2-image"
    missing = await api.call("GET", "/v1/models/{model}", "/v1/models/nope")
    assert missing.status == 404 and missing.body["error"]["code"] == "model_not_found"
    assert (await api.call("GET", "/v1/models", key=None)).status == 401


async def test_openai_wait_runs_out(tmp_path: Path) -> None:
    cfg = merge(config(tmp_path), {"surfaces": {"openai_wait_seconds": 0.05}})
    async with run_gateway(cfg) as gateway:
        async with gateway.http.get(gateway.url + "/openapi.json") as resp:
            api = Api(gateway, Contract(await resp.json()))
        reply = await api.call("POST", "/v1/images/generations",
                               json={"model": "demo-slow", "prompt": "slow"})
        assert reply.status == 504
        await gateway.wait_terminal(reply.headers["x-muxproxy-job-id"])


async def test_modelmux_surface(api: Api) -> None:
    url = "/api/v1/generations"
    created = await api.accepted("POST", url, {"prompt": "a fox", "model": "demo-image",
                                               "resolution": "1k", "aspectRatio": "3:2",
                                               "quality": "medium"})
    history_id = created.body["historyId"]
    form = aiohttp.FormData()
    form.add_field("prompt", "the same fox")
    form.add_field("reference", png(), filename="ref.png", content_type="image/png")
    assert (await api.call("POST", url, data=form)).status == 200
    slow = await api.accepted("POST", url, {"prompt": "slow", "model": "demo-slow"})
    slow_id = slow.body["historyId"]
    not_ready = await api.call("GET", url + "/{id}/image", f"{url}/{slow_id}/image")
    assert not_ready.status == 404 and not_ready.body["code"] == "not_ready"
    await api.terminal(history_id)
    status = await api.call("GET", url + "/{id}", f"{url}/{history_id}")
    assert status.body["status"] == "completed" and status.body["outputUrl"]
    image = await api.call("GET", url + "/{id}/image", f"{url}/{history_id}/image")
    assert image.status == 200 and image.body[:4] == b"\x89PNG"
    failed = await api.accepted("POST", url, {"prompt": "x", "model": "demo-fail"})
    await api.terminal(failed.body["historyId"])
    gone = await api.call("GET", url + "/{id}/image", f"{url}/{failed.body['historyId']}/image")
    assert gone.body["code"] == "generation_failed"
    status = await api.call("GET", url + "/{id}", f"{url}/{failed.body['historyId']}")
    assert status.body["status"] == "failed" and status.body["creditsUsed"] == 0
    bad_file = aiohttp.FormData()
    bad_file.add_field("prompt", "x")
    bad_file.add_field("reference", b"not an image", filename="x.png")
    cases: list[tuple[dict[str, Any], int]] = [
        ({"json": {"prompt": "x", "size": "1024x1024"}}, 400),
        ({"json": {"prompt": "x"}, "key": "wrong-key-000"}, 401),
        ({"json": {"prompt": "x", "model": "demo-priced"}, "key": POOR_KEY}, 402),
        ({"json": {"prompt": "x", "model": "demo-slow"}, "key": NARROW_KEY}, 403),
        ({"data": b"x" * 200_001, "headers": {"Content-Type": "application/json"}}, 413),
        ({"data": bad_file}, 415),
    ]
    for kwargs, status_code in cases:
        reply = await api.call("POST", url, **kwargs)
        assert reply.status == status_code, (kwargs, reply.body)
    assert (await api.call("GET", url + "/{id}", f"{url}/nope")).status == 404
    assert (await api.call("GET", url + "/{id}", f"{url}/{history_id}", key=None)).status == 401
    await api.terminal(slow_id)


async def test_signed_files(api: Api) -> None:
    created = await api.accepted("POST", "/api/v1/images/generations",
                                 {"model": "demo-image", "prompt": "file"})
    task = await api.terminal(created.body["data"]["taskId"])
    [link] = task["resultUrls"]
    path = link.removeprefix(api.gateway.url)
    template = "/files/{token}/{name}"
    got = await api.call("GET", template, path, key=None)
    assert got.status == 200 and got.body[:4] == b"\x89PNG"
    head = await api.call("HEAD", template, path, key=None)
    assert head.status == 200 and head.headers["content-type"] == "image/png"
    token = path.split("/")[2]
    tampered = await api.call("GET", template, f"/files/{token[:-2]}xx/0.png", key=None)
    assert tampered.status == 403
    job = await api.gateway.state.store.get_job(created.body["data"]["taskId"])
    assert job is not None and job.result is not None
    stored = api.gateway.state.storage.local_path(job.result.images[0].key)
    assert stored is not None
    await asyncio.to_thread(Path(stored).unlink)
    assert (await api.call("GET", template, path, key=None)).status == 404


async def test_admin_api(api: Api) -> None:
    created = await api.accepted("POST", "/admin/keys", {
        "name": "team", "credits": 100, "rpm": 60, "models": ["demo-image"]}, admin=True)
    assert created.status == 201
    key_id = created.body["key"]["id"]
    one = "/admin/keys/{key}"
    await api.call("GET", "/admin/keys", admin=True)
    await api.call("GET", one, f"/admin/keys/{key_id}", admin=True)
    await api.accepted("PATCH", one, {"rpm": None, "unlimited": True},
                       path=f"/admin/keys/{key_id}", admin=True)
    await api.accepted("POST", one + "/topup", {"amount": 5, "note": "bonus"},
                       path=f"/admin/keys/{key_id}/topup", admin=True)
    await api.accepted("POST", one + "/deduct", {"amount": 15, "note": "refund"},
                       path=f"/admin/keys/{key_id}/deduct", admin=True)
    ledger = await api.call("GET", one + "/ledger", f"/admin/keys/{key_id}/ledger",
                            params={"limit": "5"}, admin=True)
    assert ledger.body["ledger_sum"] == 90
    await api.call("GET", one + "/usage", f"/admin/keys/{key_id}/usage",
                   params={"days": "7"}, admin=True)
    await api.call("POST", one + "/revoke", f"/admin/keys/{key_id}/revoke", admin=True)
    admin_cases: list[tuple[str, str, str | None, dict[str, Any], int]] = [
        ("POST", "/admin/keys", None, {"json": {"name": "team"}}, 409),
        ("POST", "/admin/keys", None, {"json": {"name": "x", "credits": 2**64 - 1}}, 400),
        ("POST", "/admin/keys", None, {"json": {"name": "x", "colour": 1}}, 400),
        ("POST", "/admin/keys", None, {"data": b"x" * 70_000}, 413),
        ("GET", one, "/admin/keys/nope", {}, 404),
        ("PATCH", one, f"/admin/keys/{key_id}", {"json": {"rpm": 0}}, 400),
        ("POST", one + "/topup", f"/admin/keys/{key_id}/topup",
         {"json": {"amount": 2**63 - 1}}, 400),
        ("GET", one + "/ledger", f"/admin/keys/{key_id}/ledger",
         {"params": {"limit": "\u00b2"}}, 400),
        ("GET", one + "/usage", f"/admin/keys/{key_id}/usage", {"params": {"days": "0"}}, 400),
    ]
    for method, template, path, kwargs, status in admin_cases:
        reply = await api.call(method, template, path, admin=True, **kwargs)
        assert reply.status == status, (template, kwargs, reply.body)
    assert (await api.call("GET", "/admin/keys", key=KEY_A)).status == 401


async def test_unknown_routes_answer_in_each_surface_shape(api: Api) -> None:
    for path, shape in [("/v1/nope", "OpenAIError"),
                        ("/api/v1/generations/a/b/c", "ModelMuxError"),
                        ("/admin/nope", "AdminError"), ("/nope", "NativeError")]:
        async with api.gateway.http.get(api.gateway.url + path) as resp:
            assert resp.status == 404
            problems = api.contract.errors(api.contract.component(shape), await resp.json())
        assert not problems, (path, problems)
