"""Hostile and broken input on every surface: each gets a clear 4xx in the
surface's own error shape, never a 5xx, and nothing reaches the job table or the
image store. Limits come from ``[limits]`` and hold on every surface, JSON and
multipart alike."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from muxproxy.settings import SettingsError, parse_settings
from tests.support.gateway import KEY_A, RunningGateway, base_config, merge, run_gateway

ADMIN_TOKEN = "admin-token-0123456789"
POOR_KEY = "test-key-poor-0003"
SINGLE_KEY = "test-key-single-0004"
LIMITS = {"max_body_bytes": 1_500_000, "max_prompt_chars": 32_000, "max_n": 4,
          "max_reference_images": 3, "max_image_bytes": 100_000}


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()


PNG = png()
PNG_B64 = base64.b64encode(PNG).decode()
BIG_PNG = PNG + b"\0" * (LIMITS["max_image_bytes"] + 1)  # still sniffs as a PNG


@dataclass(frozen=True)
class Surface:
    name: str
    path: str
    good: Mapping[str, Any]
    shape: str

    def body(self, **changes: Any) -> dict[str, Any]:
        return {**self.good, **changes}


NATIVE = Surface("native", "/api/v1/images/generations",
                 {"model": "demo-image", "prompt": "a red fox"}, "native")
OPENAI = Surface("openai", "/v1/images/generations",
                 {"model": "demo-image", "prompt": "a red fox"}, "openai")
OPENAI_EDIT = Surface("openai-edit", "/v1/images/edits",
                      {"model": "demo-image", "prompt": "a red fox",
                       "images": [{"image_url": f"data:image/png;base64,{PNG_B64}"}]},
                      "openai")
MODELMUX = Surface("modelmux", "/api/v1/generations",
                   {"model": "demo-image", "prompt": "a red fox"}, "modelmux")
JSON_SURFACES = [NATIVE, OPENAI, OPENAI_EDIT, MODELMUX]
SURFACE_IDS = [s.name for s in JSON_SURFACES]


def assert_error(shape: str, status: int, body: Any, expected: int) -> str:
    """The surface's own error body; returns its message."""
    assert status == expected, body
    if shape == "native":
        assert set(body) == {"code", "msg", "data"} and body["code"] == expected, body
        assert body["data"] is None
        message: str = body["msg"]
    elif shape == "openai":
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        message = body["error"]["message"]
    else:
        assert set(body) == {"error", "code"} and isinstance(body["code"], str), body
        message = body["error"]
    assert isinstance(message, str) and message.strip()
    return message


@dataclass
class Client:
    gateway: RunningGateway
    tmp_path: Path

    async def send(self, path: str, *, data: Any = None, json_body: Any = None,
                   content_type: str | None = "application/json",
                   headers: Mapping[str, str] | None = None,
                   token: str = KEY_A) -> tuple[int, Any]:
        hdrs = {"Authorization": f"Bearer {token}"}
        if content_type is not None and json_body is None:
            hdrs["Content-Type"] = content_type
        hdrs.update(headers or {})
        if isinstance(data, bytes) and len(data) > 256 * 1024:
            data = io.BytesIO(data)  # aiohttp warns about large raw bytes
        async with self.gateway.http.post(self.gateway.url + path, data=data, json=json_body,
                                          headers=hdrs) as resp:
            raw = await resp.read()
            assert resp.status < 500, raw[:500]
            return resp.status, json.loads(raw) if raw else None

    async def refused(self, surface: Surface, expected: int, **kw: Any) -> str:
        status, body = await self.send(surface.path, **kw)
        message = assert_error(surface.shape, status, body, expected)
        await self.nothing_stored()
        return message

    async def nothing_stored(self) -> None:
        assert sum((await self.gateway.state.store.count_jobs()).values()) == 0
        inputs = self.tmp_path / "images" / "inputs"
        assert not inputs.exists() or not any(inputs.rglob("*")), list(inputs.rglob("*"))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    cfg = merge(base_config(tmp_path), {
        "limits": LIMITS, "admin": {"token": ADMIN_TOKEN},
        "providers": {"slow": {"kind": "demo", "options": {"delay_seconds": 0.3}}}})
    cfg["models"] = {**cfg["models"],
                     "demo-priced": {"routes": [{"provider": "demo", "model": "p"}],
                                     "credits": 5},
                     "demo-slow": {"routes": [{"provider": "slow", "model": "s"}]}}
    cfg["keys"] = [*cfg["keys"], {"name": "poor", "key": POOR_KEY},
                   {"name": "single", "key": SINGLE_KEY, "unlimited": True,
                    "max_concurrent": 1}]
    async with run_gateway(cfg) as gateway:
        yield Client(gateway, tmp_path)


def multipart(parts: Sequence[tuple[str, bytes, str | None]],
              boundary: str = "b0undary") -> bytes:
    """A raw multipart body: (name, data, filename or None for a text field)."""
    out = bytearray()
    for name, data, filename in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


FORM = "multipart/form-data; boundary=b0undary"
FORM_SURFACES = [
    (OPENAI_EDIT, [("prompt", b"edit", None), ("image", PNG, "a.png")]),
    (MODELMUX, [("prompt", b"draw", None)]),
]
FORM_IDS = ["openai-edit-form", "modelmux-form"]


MALFORMED: list[bytes] = [
    b'{"model": "demo-image", "prompt": ',  # cut off
    b"",  # empty
    b"[1, 2]",  # not an object
    b'"a string"',
    b"{'prompt': 'x'}",  # not JSON quotes
    b'{"prompt": NaN}',  # not JSON numbers
    b'{"prompt": 1e400}',
    b'{"prompt": "caf\xe9 \xff\xfe"}',  # not UTF-8
    b'\xef\xbb\xbf{"prompt": "bom"}',  # UTF-8 byte order mark
    '{"prompt": "x"}'.encode("utf-16"),  # UTF-16
    b'{"prompt": "\\ud800"}',  # lone surrogate escapes
    b'{"prompt": "a\\udc00b"}',
    b'{"prompt": "x"}{"prompt": "y"}',  # two documents
    b"[" * 100_000 + b"]" * 100_000,  # nested 100,000 deep
]


@pytest.mark.parametrize("surface", JSON_SURFACES, ids=SURFACE_IDS)
async def test_malformed_json_is_400(client: Client, surface: Surface) -> None:
    for raw in MALFORMED:
        await client.refused(surface, 400, data=raw)


WRONG_TYPES: list[dict[str, Any]] = [
    {"prompt": 42}, {"prompt": ["a", "b"]}, {"prompt": {"text": "x"}}, {"prompt": None},
    {"prompt": True}, {"model": ["demo-image"]}, {"model": 7}, {"prompt": "   "},
    {"prompt": "nul \x00 inside"},
]
NUMBER_TYPES: list[dict[str, Any]] = [
    {"n": "two"}, {"n": 1.5}, {"n": True}, {"n": [1]}, {"n": "\u00b2"}, {"n": "\u0663"},
    {"n": " 2"}, {"n": "9" * 5000}, {"n": 0}, {"n": -1},
]


@pytest.mark.parametrize("surface", JSON_SURFACES, ids=SURFACE_IDS)
async def test_wrong_types_are_400(client: Client, surface: Surface) -> None:
    cases = list(WRONG_TYPES)
    if surface is not MODELMUX:  # ModelMux has no n
        cases += NUMBER_TYPES
    for change in cases:
        message = await client.refused(surface, 400, json_body=surface.body(**change))
        assert next(iter(change)) in message, (change, message)


@pytest.mark.parametrize("surface", JSON_SURFACES, ids=SURFACE_IDS)
async def test_oversized_fields_and_bodies(client: Client, surface: Surface) -> None:
    limit = LIMITS["max_prompt_chars"]
    message = await client.refused(surface, 400, json_body=surface.body(prompt="x" * (limit + 1)))
    assert f"longer than {limit}" in message
    # A prompt of 1 MB: the body is within max_body_bytes, the prompt is not.
    await client.refused(surface, 400, json_body=surface.body(prompt="\u00e9" * 100_000))
    await client.refused(surface, 400, json_body=surface.body(prompt="x" * 1_000_000))
    await client.refused(surface, 400, json_body=surface.body(model="m" * 201))
    if surface is not MODELMUX:
        message = await client.refused(surface, 400, json_body=surface.body(n=LIMITS["max_n"] + 1))
        assert f"between 1 and {LIMITS['max_n']}" in message
    big = json.dumps(surface.body(prompt="x" * LIMITS["max_body_bytes"])).encode()
    await client.refused(surface, 413, data=big)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    await client.refused(surface, 413, data=chunks())


UNICODE = [
    "a fox \U0001F98A in snow \u2744\ufe0f",                 # emoji, variation selector
    "\U0001F468\u200d\U0001F469\u200d\U0001F467 family",      # ZWJ sequence
    "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 mixed RTL \u202e override",
    "e\u0301 a\u0308 \u1e9b\u0323 Z\u0351\u0352\u0357\u0350\u035b",  # combining marks
    "\ufeffleading BOM, \u200b zero width, \U00010348 gothic, \U0010fffd plane 16",
]


@pytest.mark.parametrize("surface", JSON_SURFACES, ids=SURFACE_IDS)
async def test_unicode_prompts_are_kept_exactly(client: Client, surface: Surface) -> None:
    prompt = " | ".join(UNICODE)
    status, body = await client.send(surface.path, json_body=surface.body(prompt=prompt))
    assert status == 200, body
    key = await client.gateway.state.store.key_named("alpha")
    assert key is not None
    jobs = await client.gateway.state.store.list_jobs(key.id)
    assert [job.request.prompt for job in jobs] == [prompt]


async def test_callback_url_header_injection_is_refused(client: Client) -> None:
    for url in ["https://example.com/hook\r\nX-Injected: 1",
                "https://example.com/hook\nX-Injected: 1",
                "https://example.com/hook\rX",
                "https://example.com/\u2028hook", "https://example.com/\u0085hook",
                "https://example.com/hook\t", "https://exa mple.com/",
                "https://example.com:99999/", "http://[::1/", "http://a..b/hook",
                "http://" + "a" * 64 + ".example/", "https:///no-host",
                "https://example.com/" + "x" * 5000]:
        await client.refused(NATIVE, 400, json_body=NATIVE.body(callback_url=url))
    for surface in (OPENAI, OPENAI_EDIT, MODELMUX):  # no callbacks there: unknown field
        message = await client.refused(
            surface, 400, json_body=surface.body(callback_url="https://example.com/\r\nX: 1"))
        assert "callback_url" in message


async def test_images_that_are_not_images(client: Client) -> None:
    text = base64.b64encode(b"just some text, not an image").decode()
    for name in ("image_base64", "image", "mask_base64"):
        body = NATIVE.body(**{name: text})
        if name == "mask_base64":
            body["image_base64"] = PNG_B64
        await client.refused(NATIVE, 415, json_body=body)
    for bad in (f"data:image/png;base64,{text}", "data:image/png;base64",
                "data:image/png;base64,!!!!", f"data:;base64,{text}"):
        await client.refused(OPENAI_EDIT, 400,
                             json_body=OPENAI_EDIT.body(images=[{"image_url": bad}]))
    await client.refused(OPENAI_EDIT, 400, json_body=OPENAI_EDIT.body(
        images=[{"image_url": "https://example.com/a.png", "junk": [[[["deep"]]]]}]))
    await client.refused(OPENAI_EDIT, 400, data=multipart(
        [("prompt", b"x", None), ("image", b"not an image", "a.png")]), content_type=FORM)
    await client.refused(MODELMUX, 415, data=multipart(
        [("prompt", b"x", None), ("ref", b"GIF87 almost", "a.gif")]), content_type=FORM)


async def test_reference_image_limits_on_every_surface(client: Client) -> None:
    count = LIMITS["max_reference_images"]
    urls = [f"https://example.com/{i}.png" for i in range(count)]
    await client.refused(NATIVE, 400, json_body=NATIVE.body(image_urls=urls,
                                                              image_base64=[PNG_B64]))
    await client.refused(NATIVE, 400, json_body=NATIVE.body(image_urls=[*urls, urls[0]]))
    await client.refused(OPENAI_EDIT, 400, json_body=OPENAI_EDIT.body(
        images=[{"image_url": u} for u in [*urls, urls[0]]]))
    await client.refused(OPENAI_EDIT, 400, content_type=FORM, data=multipart(
        [("prompt", b"x", None)] + [("image[]", PNG, f"{i}.png") for i in range(count + 1)]))
    await client.refused(MODELMUX, 400, content_type=FORM, data=multipart(
        [("prompt", b"x", None)] + [("ref", PNG, f"{i}.png") for i in range(count + 1)]))
    big = base64.b64encode(BIG_PNG).decode()
    await client.refused(NATIVE, 413, json_body=NATIVE.body(image_base64=big))
    await client.refused(NATIVE, 413, json_body=NATIVE.body(image=[PNG_B64, big]))
    await client.refused(OPENAI_EDIT, 413, json_body=OPENAI_EDIT.body(
        images=[{"image_url": f"data:image/png;base64,{big}"}]))
    await client.refused(OPENAI_EDIT, 413, content_type=FORM, data=multipart(
        [("prompt", b"x", None), ("image", BIG_PNG, "big.png")]))
    await client.refused(MODELMUX, 413, content_type=FORM, data=multipart(
        [("prompt", b"x", None), ("ref", BIG_PNG, "big.png")]))


@pytest.mark.parametrize(("surface", "base"), FORM_SURFACES, ids=FORM_IDS)
async def test_hostile_multipart(client: Client, surface: Surface,
                                 base: list[tuple[str, bytes, str | None]]) -> None:
    many = [("prompt", b"x", None)] + [(f"f{i}", b"v", None) for i in range(999)]
    message = await client.refused(surface, 400, content_type=FORM, data=multipart(many))
    assert "too many form parts" in message
    files = [("prompt", b"x", None)] + [(f"f{i}", b"", "") for i in range(999)]
    await client.refused(surface, 400, content_type=FORM, data=multipart(files))
    for name, data in [("prompt", b"caf\xe9"), ("prompt", b"\xed\xa0\x80 surrogate"),
                       ("prompt", b"x" * (LIMITS["max_prompt_chars"] * 4 + 1025)),
                       ("prompt", "\u00e9".encode() * 500_000),
                       ("callback_url", b"https://example.com/\r\nX: 1"),
                       ("n", "\u0663".encode())]:
        parts = [p for p in base if p[0] != name] + [(name, data, None)]
        await client.refused(surface, 400, content_type=FORM, data=multipart(parts))
    raw = multipart(base)
    for content_type, body in [
        ("multipart/form-data", raw),                                  # no boundary
        ("multipart/form-data; boundary=other", raw),                  # wrong boundary
        (FORM, raw[:-20]),                                             # cut short
        (FORM, raw.replace(b"Content-Disposition: form-data; ", b"", 1)),  # part without name
        (FORM, b"\xff" * 1000),
    ]:
        await client.refused(surface, 400, content_type=content_type, data=body)
    big = multipart([*base, ("pad", b"x" * LIMITS["max_body_bytes"], "pad.png")])
    await client.refused(surface, 413, content_type=FORM, data=big)


async def test_wrong_content_types(client: Client) -> None:
    good = json.dumps(NATIVE.good).encode()
    await client.refused(NATIVE, 415, data=good, content_type="text/plain")
    await client.refused(NATIVE, 415, data=good, content_type=None)
    await client.refused(NATIVE, 415, data=good, content_type="multipart/form-data; boundary=x")
    await client.refused(OPENAI, 400, data=good, content_type="application/x-www-form-urlencoded")
    await client.refused(MODELMUX, 400, data=good, content_type="text/json")
    await client.refused(OPENAI_EDIT, 400, data=good, content_type="image/png")


async def test_admin_and_webhook_endpoints_refuse_bad_bodies(client: Client) -> None:
    admin = Surface("admin", "/admin/keys", {"name": "k"}, "admin")
    hooks = Surface("hooks", "/api/v1/webhooks/redeliver", {"task_id": "x"}, "native")
    for surface, token in ((admin, ADMIN_TOKEN), (hooks, KEY_A)):
        for raw in MALFORMED:
            if len(raw) > 4096:  # over these endpoints' own body limits: a 413
                continue
            status, body = await client.send(surface.path, data=raw, token=token)
            assert_error(surface.shape, status, body, 400)
    changes: list[dict[str, Any]] = [
        {"name": 5}, {"name": ""}, {"name": "n" * 101}, {"credits": -1},
        {"credits": 2**64 - 1}, {"credits": 1.5}, {"rpm": 2**63}, {"max_concurrent": "3"},
        {"models": [1]}, {"unlimited": "yes"},
    ]
    for change in changes:
        status, body = await client.send(admin.path, json_body=admin.body(**change),
                                         token=ADMIN_TOKEN)
        assert_error("admin", status, body, 400)
    status, body = await client.send(admin.path, data=b"{" + b" " * 70_000 + b"}",
                                     token=ADMIN_TOKEN)
    assert_error("admin", status, body, 413)
    status, body = await client.send(hooks.path, data=json.dumps(
        {"task_id": "x" * 5000}).encode())
    assert_error("native", status, body, 413)
    alpha = await client.gateway.state.store.key_named("alpha")
    assert alpha is not None
    key = alpha.id  # the admin API addresses keys by id
    for amount in (0, 10**16, -(10**16), 2**63 - 1, "5", 1.0, None):
        status, body = await client.send(f"/admin/keys/{key}/topup", token=ADMIN_TOKEN,
                                         json_body={"amount": amount})
        assert_error("admin", status, body, 400)
    for query in ("limit=%C2%B2", "limit=0", "limit=" + "9" * 30, "before=-1", "days=x"):
        endpoint = "usage" if query.startswith("days") else "ledger"
        async with client.gateway.http.get(
                f"{client.gateway.url}/admin/keys/{key}/{endpoint}?{query}",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert_error("admin", resp.status, await resp.json(), 400)


async def test_uploads_of_refused_requests_are_not_kept(client: Client) -> None:
    """A request refused at the last step (credits, jobs in flight) leaves no
    reference image behind in the store."""
    for surface, body in [
        (NATIVE, NATIVE.body(model="demo-priced", image_base64=[PNG_B64, PNG_B64],
                             mask=PNG_B64)),
        (OPENAI_EDIT, OPENAI_EDIT.body(model="demo-priced")),
        (MODELMUX, None),
    ]:
        if body is None:
            await client.refused(surface, 402, token=POOR_KEY, content_type=FORM,
                                 data=multipart([("prompt", b"x", None),
                                                 ("model", b"demo-priced", None),
                                                 ("ref", PNG, "ref.png")]))
        else:
            await client.refused(surface, 402, token=POOR_KEY, json_body=body)
    status, first = await client.send(NATIVE.path, token=SINGLE_KEY,
                                      json_body=NATIVE.body(model="demo-slow"))
    assert status == 200, first
    status, body = await client.send(NATIVE.path, token=SINGLE_KEY,
                                     json_body=NATIVE.body(image_base64=PNG_B64))
    assert_error("native", status, body, 429)
    inputs = client.tmp_path / "images" / "inputs"
    assert not inputs.exists() or not any(inputs.rglob("*"))
    await client.gateway.wait_terminal(first["data"]["taskId"], key=SINGLE_KEY)


@pytest.mark.parametrize(("name", "value"), [
    ("max_body_bytes", 0), ("max_prompt_chars", 0), ("max_n", 0), ("max_image_bytes", -1),
    ("max_download_bytes", 0), ("idempotency_ttl_seconds", 0),
    ("max_reference_images", -1)])
def test_limits_must_make_sense(tmp_path: Path, name: str, value: int) -> None:
    cfg = merge(base_config(tmp_path), {"limits": {name: value}})
    with pytest.raises(SettingsError, match=f"limits.{name}"):
        parse_settings(cfg, {})
