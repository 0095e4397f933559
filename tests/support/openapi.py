"""Checking real requests and answers against the gateway's OpenAPI document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema_rs
import orjson
from multidict import CIMultiDictProxy


class Contract:
    """The document, and checks of one exchange against one of its operations."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self._validators: dict[str, jsonschema_rs.Validator] = {}

    def operation(self, method: str, template: str) -> Mapping[str, Any]:
        path = self.document["paths"].get(template)
        assert path is not None, f"{template} is not in the document"
        op = path.get(method.lower())
        assert op is not None, f"{method} {template} is not in the document"
        result: Mapping[str, Any] = op
        return result

    def errors(self, schema: Mapping[str, Any], instance: Any) -> list[str]:
        """Why ``instance`` does not fit ``schema`` (which may $ref the components)."""
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
        validator = self._validators.get(key)
        if validator is None:
            root = {**schema, "components": self.document["components"]}
            validator = jsonschema_rs.Draft202012Validator(root, validate_formats=True)
            self._validators[key] = validator
        return [f"{'/'.join(map(str, e.instance_path)) or '<root>'}: {e.message}"
                for e in validator.iter_errors(instance)]

    def component(self, name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def check_request(self, method: str, template: str, body: Any,
                      media_type: str = "application/json") -> None:
        """A body the gateway accepted must be one the document allows."""
        content = self.operation(method, template)["requestBody"]["content"]
        assert media_type in content, f"{method} {template} documents no {media_type} body"
        problems = self.errors(content[media_type]["schema"], body)
        assert not problems, f"{method} {template}: accepted body breaks the document: " \
                             f"{problems}"

    def check_response(self, method: str, template: str, status: int,
                       headers: CIMultiDictProxy[str], body: bytes) -> Any:
        """Status, content type, headers and body against the document; the body
        parsed when it is JSON."""
        where = f"{method} {template} -> {status}"
        responses = self.operation(method, template)["responses"]
        answer = responses.get(str(status))
        assert answer is not None, f"{where}: status not documented ({sorted(responses)}): " \
                                   f"{body[:300]!r}"
        for name, header in answer.get("headers", {}).items():
            header = self._resolve(header)
            if header.get("required"):
                assert name in headers, f"{where}: header {name} missing"
            if name in headers:
                problems = self.errors(header["schema"], headers[name])
                assert not problems, f"{where}: header {name}: {problems}"
        content = answer.get("content")
        if content is None:
            assert not body, f"{where}: undocumented body {body[:200]!r}"
            return None
        media_type = headers.get("content-type", "").split(";", 1)[0].strip()
        assert media_type in content, f"{where}: content type {media_type!r} not documented " \
                                      f"({sorted(content)})"
        if media_type != "application/json":
            return body
        parsed = orjson.loads(body)
        problems = self.errors(content[media_type]["schema"], parsed)
        assert not problems, f"{where}: body breaks the document: {problems}\n{parsed}"
        return parsed

    def _resolve(self, item: Mapping[str, Any]) -> Mapping[str, Any]:
        target = item.get("$ref")
        if target is None:
            return item
        node: Any = self.document
        for part in target.removeprefix("#/").split("/"):
            node = node[part]
        resolved: Mapping[str, Any] = node
        return resolved
