"""``multipart/form-data`` bodies, parsed only after ``http.read_body`` has bounded
them, with caps on the number of parts and on each part's size."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from muxproxy.errors import InvalidRequest, PayloadTooLarge


@dataclass(frozen=True)
class Part:
    name: str
    data: bytes
    # Set for file parts (even when empty), None for plain text fields.
    filename: str | None = None

    @property
    def is_file(self) -> bool:
        return self.filename is not None


@dataclass(frozen=True)
class Form:
    fields: Mapping[str, str]
    files: Sequence[Part]


@dataclass(frozen=True)
class FormLimits:
    max_parts: int
    max_file_bytes: int
    max_field_bytes: int


async def parse_form(body: bytes, content_type: str, limits: FormLimits) -> Form:
    """Split a multipart body into text fields (each name once) and file parts.

    Raises InvalidRequest for a malformed body, too many parts or a repeated text
    field; PayloadTooLarge naming the field for a file over ``max_file_bytes``.
    """
    parts = await asyncio.to_thread(_parse, body, content_type, limits)
    fields: dict[str, str] = {}
    files = []
    for part in parts:
        if part.is_file:
            files.append(part)
            continue
        if part.name in fields:
            raise InvalidRequest(f"field '{part.name}' is sent more than once", param=part.name)
        try:
            fields[part.name] = part.data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"field '{part.name}' is not valid UTF-8",
                                 param=part.name) from None
    return Form(fields=fields, files=files)


class _Collector:
    """python-multipart callbacks that keep each part in memory, enforcing the caps."""

    def __init__(self, limits: FormLimits) -> None:
        self.limits = limits
        self.parts: list[Part] = []
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._data = bytearray()
        self._name = ""
        self._filename: str | None = None
        self._cap = 0

    def part_begin(self) -> None:
        if len(self.parts) >= self.limits.max_parts:
            raise InvalidRequest(f"too many form parts: at most {self.limits.max_parts}")
        self._disposition = b""
        self._data = bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidRequest("a form part has no name in its Content-Disposition")
        self._name = options[b"name"].decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = None if filename is None else filename.decode("utf-8", "replace")
        self._cap = self.limits.max_file_bytes if filename is not None \
            else self.limits.max_field_bytes

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]
        if len(self._data) > self._cap:
            if self._filename is not None:
                raise PayloadTooLarge(f"file '{self._name}' is larger than {self._cap} bytes",
                                      param=self._name)
            raise InvalidRequest(f"field '{self._name}' is longer than {self._cap} bytes",
                                 param=self._name)

    def part_end(self) -> None:
        self.parts.append(Part(name=self._name, data=bytes(self._data),
                               filename=self._filename))

    def end(self) -> None:
        self.ended = True


def _parse(body: bytes, content_type: str, limits: FormLimits) -> list[Part]:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart body without a boundary in its Content-Type")
    collector = _Collector(limits)
    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": collector.part_begin, "on_part_data": collector.part_data,
            "on_part_end": collector.part_end, "on_header_field": collector.header_field,
            "on_header_value": collector.header_value, "on_header_end": collector.header_end,
            "on_headers_finished": collector.headers_finished, "on_end": collector.end})
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    if not collector.ended:
        raise InvalidRequest("malformed multipart body: it ends before the closing boundary")
    return collector.parts
