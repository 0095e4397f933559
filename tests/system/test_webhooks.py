"""The ``callback_url`` webhook over real HTTP: the exact payload, signatures,
and the inspection / redelivery endpoints, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from PIL import Image
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from muxproxy.clock import ManualClock
from tests.support.databases import TestDatabase
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, merge, run_gateway
from tests.support.webhooks import LOOPBACK, Answer, Receiver, next_attempt, wait_attempts

PAYLOAD_FIELDS = {"taskId", "model", "state", "param", "resultJson", "failCode", "failMsg",
                  "costTime", "completeTime", "createTime"}


@pytest.fixture
def hooks(config: dict[str, Any], database: TestDatabase) -> dict[str, Any]:
    """The suite's config, on SQLite and on PostgreSQL."""
    if database.backend != "sqlite":
        config = merge(config, {"database": {"url": database.url, "pool_size": 4}})
    return merge(config, {
        **LOOPBACK,
        "providers": {"broken": {"kind": "demo", "options": {"failure_rate": 1.0}}},
        "models": {"demo-broken": {"routes": [{"provider": "broken", "model": "flaky-1"}]}},
    })


def png_base64() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def call(gateway: RunningGateway, method: str, path: str, key: str | None = KEY_A,
               **kw: Any) -> tuple[int, dict[str, Any]]:
    headers = gateway.headers(key) if key else {}
    async with gateway.http.request(method, gateway.url + path, headers=headers, **kw) as resp:
        return resp.status, await resp.json()


async def test_completed_task_payload(hooks: dict[str, Any]) -> None:
    image = png_base64()
    async with Receiver() as receiver, run_gateway(hooks) as gateway:
        request = {"model": "demo-image", "prompt": "a red fox", "aspect_ratio": "16:9",
                   "image_base64": image, "callback_url": receiver.url()}
        task_id = await gateway.submit(request)
        [hit] = await receiver.wait_hits(1)
        task = await gateway.task(task_id)
        await wait_attempts(gateway, task_id, 1)

        assert hit.path == "/hook"
        assert hit.headers["Content-Type"] == "application/json"
        assert hit.headers["webhook-id"].startswith("msg_")
        assert "webhook-signature" not in hit.headers  # signing is opt-in
        assert image not in hit.body.decode()
        payload = hit.json
        assert set(payload) == {"code", "msg", "data"}
        assert (payload["code"], payload["msg"]) == (200, "success")
        data = payload["data"]
        assert set(data) == PAYLOAD_FIELDS
        assert (data["taskId"], data["state"], data["model"]) == (
            task_id, "completed", "demo/demo-image")
        assert isinstance(data["param"], str) and isinstance(data["resultJson"], str)
        assert json.loads(data["param"]) == {
            **request, "image_base64": f"<base64 image, {len(image)} chars>"}
        result = json.loads(data["resultJson"])
        assert set(result) == {"resultUrls"} and len(result["resultUrls"]) == 1
        assert data["failCode"] is None and data["failMsg"] is None
        assert data["createTime"] == task["createTime"]
        assert data["completeTime"] == task["completeTime"]
        assert data["costTime"] == data["completeTime"] - data["createTime"] >= 0
        async with gateway.http.get(result["resultUrls"][0]) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"

        status, view = await call(gateway, "GET",
                                  f"/api/v1/webhooks/deliveries?task_id={task_id}")
        assert status == 200 and view["data"]["status"] == "delivered"
        assert view["data"]["webhookId"] == hit.headers["webhook-id"]
        [attempt] = view["data"]["attempts"]
        assert attempt["statusCode"] == 200 and attempt["response"] == "ok"
        assert attempt["error"] is None and attempt["latencyMs"] >= 0


async def test_failed_task_payload(hooks: dict[str, Any]) -> None:
    async with Receiver() as receiver, run_gateway(hooks) as gateway:
        task_id = await gateway.submit({"model": "demo-broken", "prompt": "x",
                                        "callback_url": receiver.url("/cb?team=7")})
        [hit] = await receiver.wait_hits(1)
        task = await gateway.task(task_id)
    assert hit.path == "/cb?team=7"
    data = hit.json["data"]
    assert set(data) == PAYLOAD_FIELDS
    assert (data["state"], data["model"]) == ("failed", "broken/flaky-1")
    assert data["resultJson"] is None
    assert data["failCode"] == "demo_failure" == task["failCode"]
    assert data["failMsg"] == "demo failure (configured failure_rate)" == task["failMsg"]
    assert json.loads(data["param"]) == {"model": "demo-broken", "prompt": "x",
                                         "callback_url": receiver.url("/cb?team=7")}
    assert data["costTime"] == data["completeTime"] - data["createTime"]


async def test_signed_deliveries_verify_with_standardwebhooks(hooks: dict[str, Any]) -> None:
    async with Receiver() as receiver, run_gateway(hooks) as gateway:
        status, created = await call(gateway, "POST", "/api/v1/webhooks/secret")
        assert status == 200
        secret = created["data"]["secret"]
        assert secret.startswith("whsec_")
        status, shown = await call(gateway, "GET", "/api/v1/webhooks/secret")
        assert shown["data"] == {"enabled": True, "createTime": created["data"]["createTime"]}
        assert secret not in json.dumps(shown)  # shown once, at creation

        signed_id = await gateway.submit({"model": "demo-image", "prompt": "signed",
                                          "callback_url": receiver.url("/a")})
        plain_id = await gateway.submit({"model": "demo-image", "prompt": "plain",
                                         "callback_url": receiver.url("/b")}, key=KEY_B)
        hits = {h.path: h for h in await receiver.wait_hits(2)}

        signed = hits["/a"]
        assert signed.headers["webhook-signature"].startswith("v1,")
        assert Webhook(secret).verify(signed.body, signed.headers)["data"]["taskId"] == signed_id
        tampered = signed.body.replace(b'"completed"', b'"failed"')
        assert tampered != signed.body
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(tampered, signed.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(signed.body, {**signed.headers, "webhook-id": "msg_other"})

        plain = hits["/b"]  # key B never opted in
        assert plain.json["data"]["taskId"] == plain_id
        assert "webhook-signature" not in plain.headers and plain.headers["webhook-id"]

        status, _ = await call(gateway, "DELETE", "/api/v1/webhooks/secret")
        assert status == 200
        _, shown = await call(gateway, "GET", "/api/v1/webhooks/secret")
        assert shown["data"] == {"enabled": False, "createTime": None}


async def test_inspection_and_redelivery_belong_to_the_owning_key(
        hooks: dict[str, Any]) -> None:
    clock = ManualClock()  # frozen: the async demo job stays processing
    async with Receiver(clock) as receiver, run_gateway(hooks, clock=clock) as gateway:
        done = await gateway.submit({"model": "demo-image", "prompt": "x",
                                     "callback_url": receiver.url()})
        running = await gateway.submit({"model": "demo-image-async", "prompt": "y",
                                        "callback_url": receiver.url()})
        bare = await gateway.submit({"model": "demo-image", "prompt": "z"})
        await receiver.wait_hits(1)

        for method, path in (("GET", f"/api/v1/webhooks/deliveries?task_id={done}"),
                             ("POST", f"/api/v1/webhooks/redeliver?task_id={done}")):
            status, body = await call(gateway, method, path, key=KEY_B)
            assert (status, body) == (404, {"code": 404, "msg": "task not found",
                                            "data": None})
            status, body = await call(gateway, method, path, key=None)
            assert status == 401 and body["code"] == 401 and body["data"] is None

        status, body = await call(gateway, "GET",
                                  f"/api/v1/webhooks/deliveries?task_id={running}")
        assert status == 200 and body["data"]["status"] == "awaiting_task"
        status, body = await call(gateway, "POST", "/api/v1/webhooks/redeliver",
                                  json={"task_id": running})
        assert status == 409 and body["code"] == 409
        status, body = await call(gateway, "GET",
                                  f"/api/v1/webhooks/deliveries?task_id={bare}")
        assert status == 404 and "callback_url" in body["msg"]
        status, body = await call(gateway, "GET", "/api/v1/webhooks/deliveries")
        assert status == 400 and body["data"] is None

        status, body = await call(gateway, "POST", "/api/v1/webhooks/redeliver",
                                  json={"task_id": done})
        assert status == 200 and body["data"]["status"] == "pending"
        hits = await receiver.wait_hits(2)
        assert hits[0].headers["webhook-id"] == hits[1].headers["webhook-id"]
        delivered = await wait_attempts(gateway, done, 2)
        assert delivered.status == "delivered"


async def test_logs_carry_no_secrets_tokens_or_image_data(
        hooks: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    clock = ManualClock()
    image = png_base64()
    config = merge(hooks, {"logging": {"level": "debug"}})
    async with Receiver(clock) as receiver, run_gateway(config, clock=clock) as gateway:
        receiver.script.extend([Answer(500, body=b"try later"), Answer(410)])
        _, created = await call(gateway, "POST", "/api/v1/webhooks/secret")
        secret = created["data"]["secret"]
        task_id = await gateway.submit({"model": "demo-image", "prompt": "x",
                                        "image_base64": image,
                                        "callback_url": receiver.url("/h?token=hunter2")})
        await wait_attempts(gateway, task_id, 1)
        await next_attempt(gateway, clock, task_id)
    logs = capsys.readouterr().out
    assert "webhook attempt failed" in logs and "webhook given up" in logs
    assert f"127.0.0.1:{receiver.port}" in logs
    for leak in (secret, secret.removeprefix("whsec_"), "hunter2", image[:64]):
        assert leak not in logs
