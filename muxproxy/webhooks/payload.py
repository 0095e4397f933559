"""The callback body, exactly as the native task API's seeds define it.

``param`` and ``resultJson`` are JSON *strings* (receivers ``JSON.parse`` them
once). ``param`` is the request as the client sent it, minus inline image data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from muxproxy.pipeline.jobs import Job, JobState

_BASE64 = re.compile(r"[A-Za-z0-9+/=_-]{256,}")


def callback_body(job: Job, result_urls: Sequence[str]) -> bytes:
    """The JSON body POSTed to ``job.callback_url``; ``result_urls`` are signed fresh
    for each attempt."""
    completed = job.state is JobState.COMPLETED
    complete_time = job.completed_at if job.completed_at is not None else job.updated_at
    data: dict[str, Any] = {
        "taskId": job.id,
        "model": job.served_by,
        "state": job.state.value,
        "param": _json_string(without_image_data(job.client_params)),
        "resultJson": _json_string({"resultUrls": list(result_urls)}) if completed else None,
        "failCode": None if completed else job.fail_code,
        "failMsg": None if completed else job.fail_msg,
        "costTime": max(0, complete_time - job.created_at),
        "completeTime": complete_time,
        "createTime": job.created_at,
    }
    return orjson.dumps({"code": 200, "msg": "success", "data": data})


def without_image_data(value: Any) -> Any:
    """``value`` with every data URI or long base64 run replaced by a short note.

    The surfaces already store sanitized params; this is the last line of defence,
    since a webhook body must never carry image bytes.
    """
    if isinstance(value, str):
        if value.startswith("data:") and ";base64," in value[:100]:
            return f"<base64 image, {len(value)} chars>"
        if _BASE64.fullmatch(value):
            return f"<base64 image, {len(value)} chars>"
        return value
    if isinstance(value, Mapping):
        return {k: without_image_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_image_data(v) for v in value]
    return value


def _json_string(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
