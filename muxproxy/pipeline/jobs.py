"""Jobs: the state machine, and the job record as the store hands it out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from muxproxy.generation import GenerationRequest
from muxproxy.surfaces import SurfaceName

R = TypeVar("R")


def evolve(record: R, **changes: Any) -> R:
    """``dataclasses.replace()`` for the frozen records on the path of every request
    and job step, without its introspection of the fields on every call. Only for
    dataclasses without ``__post_init__`` or ``__slots__``; the names in
    ``changes`` are not checked."""
    copy: R = object.__new__(type(record))
    copy.__dict__.update(record.__dict__, **changes)
    return copy


def built(cls: type[R], fields: dict[str, Any]) -> R:
    """A frozen record made from every one of its fields, without the generated
    ``__init__`` (one ``object.__setattr__`` a field: a third of a job read's
    cost). The same restrictions as :func:`evolve`, and ``fields`` must name
    every field, defaults included."""
    record: R = object.__new__(cls)
    record.__dict__.update(fields)
    return record


class RowLike(Protocol):
    """A database row readable by column name (sqlite3.Row, asyncpg.Record, dict)."""

    def __getitem__(self, key: str) -> Any: ...


class JobState(StrEnum):
    # Accepted and stored; waiting for a worker slot.
    PENDING = "pending"
    # A worker holds it: calling a sync upstream, or an async upstream has it and
    # we poll. Retries and resumed polling stay here.
    PROCESSING = "processing"
    # Images are stored and listed in the result. Terminal.
    COMPLETED = "completed"
    # Given up; fail_code and fail_msg say why. Terminal.
    FAILED = "failed"


# The only moves a job may make. The store refuses any other.
#   pending    -> processing  (claimed by a worker)
#   pending    -> failed      (deadline passed before any worker took it)
#   processing -> processing  (upstream id recorded, retry or next poll scheduled)
#   processing -> completed   (images stored)
#   processing -> failed      (permanent error, retries and routes exhausted, deadline)
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.PROCESSING, JobState.FAILED}),
    JobState.PROCESSING: frozenset({JobState.PROCESSING, JobState.COMPLETED, JobState.FAILED}),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
}
TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED})


class IllegalTransition(Exception):
    def __init__(self, job_id: str, current: JobState | None, target: JobState) -> None:
        super().__init__(f"job {job_id}: {current} -> {target} is not allowed")
        self.job_id = job_id
        self.current = current
        self.target = target


def can_transition(current: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[current]


@dataclass(frozen=True)
class StoredImage:
    key: str
    content_type: str
    width: int | None = None
    height: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "content_type": self.content_type,
                "width": self.width, "height": self.height}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredImage:
        return cls(key=data["key"], content_type=data["content_type"],
                   width=data.get("width"), height=data.get("height"))


@dataclass(frozen=True)
class JobResult:
    images: tuple[StoredImage, ...]
    revised_prompt: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"images": [i.to_json() for i in self.images]}
        if self.revised_prompt is not None:
            data["revised_prompt"] = self.revised_prompt
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobResult:
        return cls(images=tuple(StoredImage.from_json(i) for i in data["images"]),
                   revised_prompt=data.get("revised_prompt"))


@dataclass(frozen=True)
class NewJob:
    """What a surface hands the store to create a job."""

    id: str
    key_id: str
    surface: SurfaceName
    model: str
    request: GenerationRequest
    client_params: Mapping[str, Any]
    provider: str
    upstream_model: str
    callback_url: str | None
    created_at: int
    deadline_at: int
    credits: int = 0
    # The key's cap on unfinished jobs, checked by the store inside the insert.
    max_concurrent: int | None = None
    # Which of the model's routes serves first (earlier ones may be unconfigured).
    route_index: int = 0
    # Created already claimed by a scheduler with a free slot (it starts it at once).
    lease: Lease | None = None
    # The Idempotency-Key reserved for this request: bound to the job by the insert.
    idempotency: IdempotencyClaim | None = None


@dataclass(frozen=True)
class Lease:
    owner: str
    until: int


@dataclass(frozen=True)
class IdempotencyClaim:
    """An ``Idempotency-Key`` reserved by one request, until its job is created.
    ``token`` tells this reservation from a later one that took the key over."""

    key_id: str
    idem_key: str
    token: str


@dataclass(frozen=True)
class Job:
    id: str
    key_id: str
    surface: SurfaceName
    model: str
    state: JobState
    request: GenerationRequest
    client_params: Mapping[str, Any]
    route_index: int
    provider: str
    upstream_model: str
    upstream_id: str | None
    upstream_state: Mapping[str, Any]
    result: JobResult | None
    fail_code: str | None
    fail_msg: str | None
    attempts: int
    recoveries: int
    polls: int
    callback_url: str | None
    credits: int
    billing: str
    created_at: int
    started_at: int | None
    completed_at: int | None
    updated_at: int
    run_after: int
    deadline_at: int
    lease_owner: str | None = None
    lease_until: int | None = None

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def served_by(self) -> str:
        """``<provider>/<model_name>``, as the callback's ``data.model`` names it."""
        return f"{self.provider}/{self.upstream_model}"

    def moved(self, target: JobState, *, now: int, release: bool,
              changes: Mapping[str, Any]) -> Job:
        """This job as a transition to ``target`` leaves it, with ``changes`` given
        in their stored form (``result`` and ``upstream_state`` as JSON mappings):
        what a backend hands back when it need not read the row again."""
        fields = dict(changes, state=target, updated_at=now)
        if "result" in fields:
            found = fields["result"]
            fields["result"] = None if found is None else JobResult.from_json(found)
        if "upstream_state" in fields:
            fields["upstream_state"] = dict(fields["upstream_state"] or {})
        if release:
            fields["lease_owner"] = fields["lease_until"] = None
        return evolve(self, **fields)
