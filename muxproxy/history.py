"""A key's history, a page at a time: the ``limit`` and ``before`` query parameters
the list endpoints share (docs/history.md), and the cursor they hand out.

The cursor is ``<createdAt>.<id>`` of the last job on a page: the next page starts
right after that job in the newest-first order (``created_at``, then ``id``), so two
jobs created in one millisecond are never split across a page boundary and lost. A
bare number of milliseconds works too, as "created before this time". Clients treat
the cursor as opaque."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from muxproxy.errors import InvalidRequest
from muxproxy.gateway import Gateway
from muxproxy.pipeline.jobs import Job
from muxproxy.store import ApiKey

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    # The ``before`` of the next page; None on the last one.
    next_cursor: str | None


def cursor(job: Job) -> str:
    return f"{job.created_at}.{job.id}"


def parse_limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"'limit' must be a whole number from 1 to {MAX_LIMIT}",
                             param="limit")
    return int(raw)


def parse_before(query: Mapping[str, str]) -> tuple[int | None, str | None]:
    """``(created_at, id)`` from ``before``: both None without one, no id for a time."""
    raw = query.get("before")
    if raw is None or raw == "":
        return None, None
    millis, _, job_id = raw.partition(".")
    if not millis.isascii() or not millis.isdigit() or len(millis) > 15 \
            or (_ and not job_id) or len(job_id) > 64:
        raise InvalidRequest("'before' must be the nextCursor of an earlier page (or a time "
                             "in milliseconds since the epoch)", param="before")
    return int(millis), job_id or None


async def page(gateway: Gateway, key: ApiKey, query: Mapping[str, str]) -> Page:
    """The key's jobs the query asks for, newest first, and the cursor past them.
    One job more than asked is read, so the last page has no cursor."""
    limit = parse_limit(query)
    before, before_id = parse_before(query)
    jobs = await gateway.list_jobs(key, limit=limit + 1, before=before, before_id=before_id)
    if len(jobs) <= limit:
        return Page(jobs, None)
    return Page(jobs[:limit], cursor(jobs[limit - 1]))
