"""A job table of realistic size, written straight into SQLite (executemany), for
tests and benchmarks of what must cost the same at any table size."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from muxproxy.store.schema import MIGRATIONS
from muxproxy.store.sqlite import _statements

MODELS = (("demo-image", "demo"), ("demo-image-async", "demo-queue"))
STATES = ("completed", "completed", "completed", "failed")
T0 = 1_700_000_000_000


COLUMNS = ("id", "key_id", "surface", "model", "state", "params", "client_params",
           "provider", "upstream_model", "created_at", "updated_at", "completed_at",
           "run_after", "deadline_at")


def _rows(count: int, key_id: str, swept: bool) -> Iterator[tuple[Any, ...]]:
    for i in range(count):
        model, provider = MODELS[i % len(MODELS)]
        at = T0 + i
        row = (f"bulk-{i:09d}", key_id, "native", model, STATES[i % len(STATES)],
               '{"prompt":"p"}', '{"prompt":"p"}', provider, model, at, at, at, at,
               at + 600_000)
        yield (*row, 2) if swept else row


def fill_jobs(path: Path, count: int, key_id: str = "key_bulk") -> dict[str, int]:
    """Create the schema at ``path`` and insert ``count`` ended jobs. Returns how many
    rows each state got."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        # No journal while filling (a failed fill is thrown away); WAL, as the
        # gateway runs it, once done.
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            db.execute("BEGIN")
            for statement in _statements(script):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        # Old jobs of a running gateway: their blobs already swept (where the schema
        # has a retention sweep), so the rows are all there is.
        swept = any(c[1] == "swept" for c in db.execute("PRAGMA table_info(jobs)"))
        columns = (*COLUMNS, "swept") if swept else COLUMNS
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO jobs ({', '.join(columns)}) "  # noqa: S608
                       f"VALUES ({', '.join('?' for _ in columns)})",
                       _rows(count, key_id, swept))
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode = WAL")
    finally:
        db.close()
    states: dict[str, int] = {}
    for i in range(count):
        states[STATES[i % len(STATES)]] = states.get(STATES[i % len(STATES)], 0) + 1
    return states
