"""Native task API behaviour beyond the happy path."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from muxproxy.clock import ManualClock
from muxproxy.storage import blob_key
from tests.support.gateway import KEY_A, KEY_B, RunningGateway, merge, run_gateway
from tests.support.references import ALLOW_LOOPBACK, ImageServer, record_calls


async def fetch_image(gateway: RunningGateway, url: str) -> tuple[str, Image.Image]:
    async with gateway.http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["content-type"], Image.open(io.BytesIO(await resp.read()))


@pytest.mark.parametrize(("fields", "ctype", "fmt", "size"), [
    ({"size": "640x480"}, "image/png", "PNG", (640, 480)),
    ({"aspect_ratio": "9:16", "resolution": "1k", "output_format": "jpeg"}, "image/jpeg",
     "JPEG", (768, 1360)),
    ({"aspect_ratio": "1:1", "resolution": "2k", "output_format": "webp"}, "image/webp",
     "WEBP", (2048, 2048)),
    ({"output_format": "jpg"}, "image/jpeg", "JPEG", (1024, 1024)),
])
async def test_size_and_format_are_honoured(gateway: RunningGateway, fields: dict[str, Any],
                                            ctype: str, fmt: str,
                                            size: tuple[int, int]) -> None:
    task_id = await gateway.submit({"model": "demo-image", "prompt": "sizes", **fields})
    task = await gateway.wait_terminal(task_id)
    content_type, image = await fetch_image(gateway, task["resultUrls"][0])
    assert (content_type, image.format, image.size) == (ctype, fmt, size)


async def test_n_images_and_distinct_urls(gateway: RunningGateway) -> None:
    task_id = await gateway.submit({"model": "demo-image", "prompt": "two", "n": 2,
                                    "size": "128x128"})
    task = await gateway.wait_terminal(task_id)
    urls = task["resultUrls"]
    assert len(urls) == 2
    images = [await fetch_image(gateway, u) for u in urls]
    assert images[0][1].tobytes() != images[1][1].tobytes()


async def test_provider_model_ids_resolve(gateway: RunningGateway) -> None:
    task_id = await gateway.submit({"model": "grok-image/grok-4.2-image", "prompt": "cat"})
    task = await gateway.wait_terminal(task_id)
    assert task["state"] == "completed"
    assert task["model"] == "demo/grok"


async def test_async_upstream_is_polled_to_completion(gateway: RunningGateway) -> None:
    task_id = await gateway.submit({"model": "demo-image-async", "prompt": "queued"})
    task = await gateway.wait_terminal(task_id)
    assert task["state"] == "completed"
    job = await gateway.state.store.get_job(task_id)
    assert job is not None
    assert job.upstream_id == f"demo-{task_id}"
    assert job.polls == 0


async def test_keys_only_see_their_own_tasks(gateway: RunningGateway) -> None:
    task_id = await gateway.submit({"model": "demo-image", "prompt": "mine"}, key=KEY_A)
    await gateway.wait_terminal(task_id, key=KEY_A)
    async with gateway.http.get(f"{gateway.url}/api/v1/images/generations",
                                params={"task_id": task_id},
                                headers=gateway.headers(KEY_B)) as resp:
        body = await resp.json()
    assert resp.status == 404
    assert body == {"code": 404, "msg": "task not found", "data": None}


async def test_failed_task_shows_fail_message(config: dict[str, Any]) -> None:
    failing = {"providers": {"demo": {"options": {"failure_rate": 1.0}}}}
    async with run_gateway(merge(config, failing)) as gw:
        task_id = await gw.submit({"model": "demo-image", "prompt": "doomed"})
        task = await gw.wait_terminal(task_id)
    assert task["state"] == "failed"
    assert task["failMsg"] == "demo failure (configured failure_rate)"
    assert task["failCode"] == "demo_failure"
    assert "resultUrls" not in task
    assert task["completeTime"] >= task["createTime"]


async def test_job_past_its_deadline_fails(config: dict[str, Any]) -> None:
    slow = {"providers": {"demo": {"options": {"delay_seconds": 30}}},
            "jobs": {"deadline_seconds": 0.3}}
    async with run_gateway(merge(config, slow)) as gw:
        task_id = await gw.submit({"model": "demo-image", "prompt": "too slow"})
        task = await gw.wait_terminal(task_id, timeout=5)
    assert task["state"] == "failed"
    assert task["failCode"] == "deadline_exceeded"
    assert "deadline" in task["failMsg"]


async def test_pending_job_past_its_deadline_is_swept(config: dict[str, Any]) -> None:
    """A job no worker could take in time (the provider is saturated) still ends."""
    clock = ManualClock()
    busy = {"providers": {"demo": {"max_concurrency": 1, "options": {"delay_seconds": 3600}}},
            "jobs": {"deadline_seconds": 60}}
    async with run_gateway(merge(config, busy), clock=clock) as gw:
        first = await gw.submit({"model": "demo-image", "prompt": "hogs the slot"})
        second = await gw.submit({"model": "demo-image", "prompt": "waits"})
        assert (await gw.task(second))["state"] == "pending"
        clock.advance(61)
        task = await gw.wait_terminal(second)
        assert task["failCode"] == "deadline_exceeded"
        assert (await gw.task(first))["state"] in ("processing", "failed")


async def test_signed_urls_reject_tampering(gateway: RunningGateway) -> None:
    task_id = await gateway.submit({"model": "demo-image", "prompt": "signed"})
    [url] = (await gateway.wait_terminal(task_id))["resultUrls"]
    prefix, token, name = url.rsplit("/", 2)
    payload, stamp, signature = token.split(".")
    forged_key = "InJlc3VsdHMvb3RoZXIvMC5wbmci"  # "results/other/0.png"
    flipped = "yy" if signature.endswith("xx") else "xx"
    for bad in (f"{prefix}/{payload}.{stamp}.{signature[:-2]}{flipped}/{name}",
                f"{prefix}/{forged_key}.{stamp}.{signature}/{name}",
                f"{prefix}/{payload}.{'ZZZZZZ'}.{signature}/{name}",
                f"{prefix}/garbage/{name}"):
        async with gateway.http.get(bad) as resp:
            assert resp.status == 403, bad
            body = await resp.json()
            assert body["code"] == 403
            assert resp.headers["content-type"].startswith("application/json")


async def test_signed_urls_expire(config: dict[str, Any]) -> None:
    clock = ManualClock(start=1_800_000_000)
    async with run_gateway(merge(config, {"storage": {"url_ttl_seconds": 60}}),
                           clock=clock) as gw:
        task_id = await gw.submit({"model": "demo-image", "prompt": "expiring"})
        [url] = (await gw.wait_terminal(task_id))["resultUrls"]
        async with gw.http.get(url) as resp:
            assert resp.status == 200
        clock.advance(61)
        async with gw.http.get(url) as resp:
            assert resp.status == 403
            assert "expired" in (await resp.json())["msg"]
        # Polling again hands out a fresh link.
        [fresh] = (await gw.task(task_id))["resultUrls"]
        async with gw.http.get(fresh) as resp:
            assert resp.status == 200


async def test_valid_signature_for_a_missing_file_is_404(gateway: RunningGateway,
                                                         tmp_path: Path) -> None:
    url = gateway.state.signer.url("results/never-made/0.png")
    async with gateway.http.get(url) as resp:
        assert resp.status == 404
    escape = gateway.state.signer.url("../../etc/passwd")
    async with gateway.http.get(escape) as resp:
        assert resp.status == 404


async def test_health_and_readiness(gateway: RunningGateway) -> None:
    async with gateway.http.get(gateway.url + "/healthz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    async with gateway.http.get(gateway.url + "/readyz") as resp:
        body = await resp.json()
        # One process on its SQLite file: no signals travel.
        assert (resp.status, body["status"], body["signals"]) == (200, "ready", "local")
    await gateway.state.store.aclose()
    async with gateway.http.get(gateway.url + "/readyz") as resp:
        assert resp.status == 503
    await gateway.state.store.open()


async def test_metrics_exposition(gateway: RunningGateway) -> None:
    task_id = await gateway.submit({"model": "demo-image", "prompt": "counted"})
    await gateway.wait_terminal(task_id)
    async with gateway.http.post(f"{gateway.url}/api/v1/images/generations", json={}) as resp:
        assert resp.status == 401
    async with gateway.http.get(gateway.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain")
        text = await resp.text()

    def value(name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        raise AssertionError(f"no sample {name} {labels}")

    route = "/api/v1/images/generations"
    assert value("muxproxy_http_requests_total", route=route, method="POST", status="200") == 1
    assert value("muxproxy_http_requests_total", route=route, method="POST", status="401") == 1
    assert value("muxproxy_http_request_duration_seconds_count", route=route,
                 method="POST") == 2
    job = {"model": "demo-image", "provider": "demo", "state": "completed"}
    assert value("muxproxy_jobs", **job) == 1
    assert value("muxproxy_job_transitions_total", **job) == 1
    assert value("muxproxy_job_duration_seconds_count", **job) == 1
    assert value("muxproxy_jobs_in_flight", provider="demo") == 0
    assert value("muxproxy_upstream_requests_total", provider="demo", outcome="ok") == 1


async def test_logs_are_json_with_request_id_and_no_secrets(
        config: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    import base64

    import orjson

    from tests.system.test_native_errors import png_b64

    image = png_b64((64, 64))
    async with run_gateway(merge(config, {"logging": {"level": "debug"}})) as gw:
        async with gw.http.post(f"{gw.url}/api/v1/images/generations",
                                headers={**gw.headers(), "x-request-id": "req-abc-123"},
                                json={"model": "demo-image", "prompt": "logged",
                                      "image_base64": image}) as resp:
            assert resp.headers["x-request-id"] == "req-abc-123"
            task_id = (await resp.json())["data"]["taskId"]
        await gw.wait_terminal(task_id)
        async with gw.http.get(f"{gw.url}/api/v1/images/generations",
                               params={"task_id": "x"},
                               headers={"Authorization": "Bearer not-a-real-key-42"}) as resp:
            assert resp.status == 401
    out = capsys.readouterr().out
    records = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(r.get("request_id") == "req-abc-123" and r.get("event") == "request"
               for r in records)
    assert any(r.get("job_id") == task_id for r in records)
    for secret in (KEY_A, KEY_B, "not-a-real-key-42", image[:60],
                   base64.b64encode(b"\x89PNG").decode()[:6] + image[6:40]):
        assert secret not in out


async def test_reference_images_keep_the_clients_order(config: dict[str, Any]) -> None:
    """Seed 002: "combine the model from image 1 (image_base64) with the outfit from
    image 2 (image_urls)": the upstream must see them in that order."""
    from tests.system.test_native_errors import png_b64

    async with ImageServer() as server, run_gateway(merge(config, ALLOW_LOOPBACK)) as gateway:
        calls = record_calls(gateway.state.providers["demo"])
        outfit, third = server.url("/image.png?outfit"), server.url("/image.png?third")
        body = {"model": "demo-image", "prompt": "combine", "image_base64": png_b64(),
                "image_urls": [outfit], "image_url": third}
        task_id = await gateway.submit(body)
        assert (await gateway.wait_terminal(task_id))["state"] == "completed"
        job = await gateway.state.store.get_job(task_id)
        assert job is not None
        first, second, last = job.request.images
        assert first.blob == blob_key("inputs", task_id, job.created_at, "image0", "png")
        assert (second.url, last.url) == (outfit, third)
        [call] = calls
        assert [ref.url for ref in call.images] == [None, outfit, third]
        assert call.images[0].data is not None and call.images[0].data.startswith(b"\x89PNG")
        assert server.paths == ["/image.png?outfit", "/image.png?third"]
        # The OpenAI surface's JSON edit form keeps its list order too.
        async with gateway.http.post(
                f"{gateway.url}/v1/images/edits", headers=gateway.headers(),
                json={"model": "demo-image", "prompt": "edit", "size": "256x256",
                      "images": [{"image_url": server.url()},
                                 {"image_url": f"data:image/png;base64,{png_b64()}"}]}) as resp:
            assert resp.status == 200, await resp.text()
            job_id = resp.headers["x-muxproxy-job-id"]
        job = await gateway.state.store.get_job(job_id)
        assert job is not None
        assert [i.url is not None for i in job.request.images] == [True, False]
