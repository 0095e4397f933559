"""Bounded multipart parsing (muxproxy/forms.py)."""

from __future__ import annotations

import pytest

from muxproxy.errors import InvalidRequest, PayloadTooLarge
from muxproxy.forms import FormLimits, parse_form

CONTENT_TYPE = "multipart/form-data; boundary=XyZ"
LIMITS = FormLimits(max_parts=4, max_file_bytes=64, max_field_bytes=32)


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return (f"--XyZ\r\nContent-Disposition: {disposition}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + value + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--XyZ--\r\n"


async def test_fields_and_files() -> None:
    form = await parse_form(body(part("prompt", "fox ü".encode()), part("n", b"2"),
                                 part("image[]", b"\x89PNG", "a.png"),
                                 part("image[]", b"", "")), CONTENT_TYPE, LIMITS)
    assert form.fields == {"prompt": "fox ü", "n": "2"}
    assert [(f.name, f.filename, f.data) for f in form.files] == [
        ("image[]", "a.png", b"\x89PNG"), ("image[]", "", b"")]


@pytest.mark.parametrize(("raw", "content_type", "message"), [
    (body(part("a", b"1"), part("a", b"2")), CONTENT_TYPE, "more than once"),
    (body(*[part(f"f{i}", b"x") for i in range(5)]), CONTENT_TYPE, "too many form parts"),
    (body(part("prompt", b"x" * 33)), CONTENT_TYPE, "longer than 32 bytes"),
    (body(part("prompt", b"\xff\xfe")), CONTENT_TYPE, "not valid UTF-8"),
    (body(part("prompt", b"x"))[:-12], CONTENT_TYPE, "ends before the closing boundary"),
    (b"no boundary here", CONTENT_TYPE, "malformed multipart body"),
    (body(part("prompt", b"x")), "multipart/form-data", "without a boundary"),
    (b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--\r\n", CONTENT_TYPE,
     "no name"),
])
async def test_malformed_bodies_are_400(raw: bytes, content_type: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await parse_form(raw, content_type, LIMITS)
    assert message in caught.value.message


async def test_an_oversized_file_is_413_naming_the_field() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        await parse_form(body(part("mask", b"x" * 65, "m.png")), CONTENT_TYPE, LIMITS)
    assert caught.value.param == "mask"
