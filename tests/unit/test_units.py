"""Small pure pieces: sizes, sniffing, backoff, pricing, the manual clock."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import struct
from dataclasses import FrozenInstanceError, replace
from typing import Any

import orjson
import pytest
from PIL import Image

from muxproxy import images
from muxproxy.clock import ManualClock
from muxproxy.errors import InvalidRequest
from muxproxy.generation import GenerationRequest, ImageRef
from muxproxy.pipeline.backoff import backoff, poll_delay
from muxproxy.pipeline.jobs import Job, JobResult, JobState, evolve
from muxproxy.pricing import billed, price, resolution_of
from muxproxy.settings import ModelSettings
from muxproxy.store.rows import JSON_COLUMNS, job_from_row
from muxproxy.surfaces import SurfaceName


@pytest.mark.parametrize(("ratio", "resolution", "expected"), [
    ("1:1", "1k", (1024, 1024)),
    ("16:9", "1k", (1360, 768)),
    ("9:16", "2k", (1536, 2736)),
    ("1:1", "4k", (4096, 4096)),
    ("16:9", "4k", (4096, 2304)),
    ("1:4", "4k", (1024, 4096)),
    (None, None, (1024, 1024)),
    ("auto", "2k", (2048, 2048)),
])
def test_pixel_size(ratio: str | None, resolution: str | None,
                    expected: tuple[int, int]) -> None:
    assert images.pixel_size(None, ratio, resolution) == expected
    assert images.pixel_size((300, 200), ratio, resolution) == (300, 200)


def test_sniff_judges_bytes_not_names() -> None:
    assert images.sniff(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert images.sniff(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert images.sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert images.sniff(b"GIF89a") == "image/gif"
    assert images.sniff(b"%PDF-1.7") is None
    assert images.sniff(b"") is None


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "JPEG", "WEBP"])
def test_dimensions_read_from_the_encoded_image(fmt: str) -> None:
    out = io.BytesIO()
    Image.new("RGB", (321, 123), "teal").save(out, fmt)
    data = out.getvalue()
    assert images.dimensions(data) == (321, 123)
    # A file cut off inside its header has no size.
    assert images.dimensions(data[:8]) == (None, None)


def test_a_gif_frame_larger_than_its_screen_gives_the_frame_size() -> None:
    out = io.BytesIO()
    Image.new("RGB", (50, 40), "teal").save(out, "GIF")
    data = bytearray(out.getvalue())
    data[6:10] = struct.pack("<HH", 10, 10)  # the logical screen, smaller than the frame
    assert images.dimensions(bytes(data)) == (50, 40)


def test_dimensions_of_what_is_not_an_image() -> None:
    assert images.dimensions(b"%PDF-1.7 ...") == (None, None)
    assert images.dimensions(b"") == (None, None)
    # A PNG header claiming a zero width is no size at all.
    assert images.dimensions(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(8)) == (None, None)


def test_backoff_doubles_caps_and_jitters() -> None:
    assert [backoff(a, 1, 60) for a in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(10, 1, 60) == 60
    assert backoff(2, 1, 60, jitter=0.5, rand=lambda: 0.0) == 1.0
    assert backoff(2, 1, 60, jitter=0.5, rand=lambda: 1.0) == 3.0
    assert poll_delay(0, 1, 15) == 1
    assert poll_delay(1, 1, 15) == 1.5
    assert poll_delay(20, 1, 15) == 15


GPT = ModelSettings(id="gpt-image-2", routes=(), credits={
    "1k": {"standard": 2, "medium": 10, "high": 18},
    "2k": {"standard": 5, "medium": 20, "high": 40},
    "4k": {"standard": 10, "medium": 32, "high": 80}})


@pytest.mark.parametrize(("fields", "credits"), [
    # Quality left to the upstream: the dearest tier it may render.
    ({}, 18),
    ({"quality": "auto", "resolution": "2k"}, 40),
    ({"quality": "high"}, 18),
    ({"quality": "hd"}, 18),
    ({"quality": "low"}, 2),
    ({"resolution": "4k", "quality": "medium"}, 32),
    ({"resolution": "2k", "quality": "high", "n": 3}, 120),
    ({"size": (2048, 2048), "quality": "medium"}, 20),
])
def test_price_by_resolution_and_quality(fields: dict[str, object], credits: int) -> None:
    request = GenerationRequest(prompt="x", **fields)  # type: ignore[arg-type]
    assert price(GPT, request) == credits


def test_default_quality_prices_and_names_what_the_upstream_gets() -> None:
    model = replace(GPT, default_quality="medium")
    for quality in (None, "auto"):
        request = GenerationRequest(prompt="x", quality=quality, resolution="4k")
        assert billed(model, request).quality == "medium"
        assert price(model, request) == 32
    assert billed(GPT, GenerationRequest(prompt="x")).quality == "high"
    explicit = GenerationRequest(prompt="x", quality="low")
    assert billed(model, explicit) is explicit
    assert price(model, explicit) == 2
    flat = ModelSettings(id="flat", routes=(), credits=3)
    assert billed(flat, GenerationRequest(prompt="x")).quality is None


def test_price_refuses_what_the_table_lacks() -> None:
    banana = ModelSettings(id="nano-banana", routes=(), credits={"1k": 5})
    assert price(banana, GenerationRequest(prompt="x", n=2)) == 10
    with pytest.raises(InvalidRequest, match="resolution '2k'"):
        price(banana, GenerationRequest(prompt="x", resolution="2k"))
    with pytest.raises(InvalidRequest, match="quality 'ultra'"):
        price(GPT, GenerationRequest(prompt="x", quality="ultra"))
    assert price(ModelSettings(id="flat", routes=(), credits=3),
                 GenerationRequest(prompt="x", n=4)) == 12
    assert resolution_of(GenerationRequest(prompt="x", size=(3840, 2160))) == "4k"


async def test_manual_clock_wakes_sleepers_in_order() -> None:
    clock = ManualClock(start=100.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("late", 5)), asyncio.create_task(sleeper("soon", 1))]
    await asyncio.sleep(0)
    assert clock.next_wakeup == 101.0
    clock.advance(1)
    await asyncio.sleep(0)
    assert woke == ["soon"]
    clock.advance(4)
    await asyncio.gather(*tasks)
    assert woke == ["soon", "late"]
    assert clock.now() == 105.0


def test_pixel_sizes_count_against_a_models_resolutions() -> None:
    from muxproxy.pricing import check_capabilities

    banana = ModelSettings(id="nano-banana", routes=(), credits=5, resolutions=("1k",))
    check_capabilities(banana, GenerationRequest(prompt="x", size=(1024, 1024)))
    with pytest.raises(InvalidRequest, match="not '2k'") as info:
        check_capabilities(banana, GenerationRequest(prompt="x", size=(2048, 2048)))
    assert info.value.param == "size"
    with pytest.raises(InvalidRequest, match="not '4k'") as info:
        check_capabilities(banana, GenerationRequest(prompt="x", resolution="4k"))
    assert info.value.param == "resolution"


def test_evolve_is_dataclasses_replace_without_the_cost() -> None:
    request = GenerationRequest(prompt="a fox", n=2, images=(ImageRef(url="https://x/a.png"),))
    changed = evolve(request, images=(), mask=ImageRef(blob="inputs/m.png"))
    assert changed == replace(request, images=(), mask=ImageRef(blob="inputs/m.png"))
    assert type(changed) is GenerationRequest
    assert request.images == (ImageRef(url="https://x/a.png"),) and request.mask is None
    with pytest.raises(FrozenInstanceError):
        changed.prompt = "a hen"  # type: ignore[misc]


def test_a_job_read_from_a_row_is_the_one_its_constructor_makes() -> None:
    result = {"images": [{"key": "results/j1/0.png", "content_type": "image/png",
                          "width": 1, "height": 1}]}
    stored: dict[str, Any] = {
        "id": "j1", "key_id": "k1", "surface": "openai", "model": "m", "state": "completed",
        "params": GenerationRequest(prompt="a fox").to_json(), "client_params": {"n": 1},
        "route_index": 0, "provider": "demo", "upstream_model": "demo-image",
        "upstream_id": "u1", "upstream_state": None,
        "result": result,
        "fail_code": None, "fail_msg": None, "attempts": 1, "recoveries": 0, "polls": 2,
        "callback_url": None, "credits": 3, "billing": "charged", "created_at": 1,
        "started_at": 2, "completed_at": 3, "updated_at": 3, "run_after": 2,
        "deadline_at": 9, "lease_owner": None, "lease_until": None}
    expected = Job(
        id="j1", key_id="k1", surface=SurfaceName.OPENAI, model="m",
        state=JobState.COMPLETED, request=GenerationRequest(prompt="a fox"),
        client_params={"n": 1}, route_index=0, provider="demo", upstream_model="demo-image",
        upstream_id="u1", upstream_state={}, result=JobResult.from_json(result),
        fail_code=None, fail_msg=None, attempts=1, recoveries=0, polls=2, callback_url=None,
        credits=3, billing="charged", created_at=1, started_at=2, completed_at=3,
        updated_at=3, run_after=2, deadline_at=9)
    # As a driver that decodes JSON hands it over, and as SQLite's text in a Row.
    as_text = {k: orjson.dumps(v).decode() if k in JSON_COLUMNS and v is not None else v
               for k, v in stored.items()}
    with sqlite3.connect(":memory:") as db:
        db.row_factory = sqlite3.Row
        row = db.execute(f"SELECT {', '.join(f':{k} AS {k}' for k in as_text)}",
                         as_text).fetchone()
    for read in (job_from_row(stored), job_from_row(row)):
        assert read == expected
        assert vars(read).keys() == vars(expected).keys()
        with pytest.raises(FrozenInstanceError):
            read.state = JobState.FAILED  # type: ignore[misc]
