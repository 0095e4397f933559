"""One database per test on either backend, for the system suites that run the
gateway as a process and audit what it left: the same test on SQLite and on
PostgreSQL (``database`` fixture, registered in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.audit import Database
from tests.support.postgres import fresh_database

BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True)
class TestDatabase:
    """``url`` goes into the gateway's config (a SQLite path is relative to the
    config's folder); ``audit`` is what :mod:`tests.support.audit` reads."""

    __test__ = False  # not a test class, whatever its name says

    backend: str
    url: str
    audit: Database


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path
                   ) -> AsyncIterator[TestDatabase]:
    """A fresh database: a SQLite file under ``tmp_path/state``, or a new PostgreSQL
    database (skipped, or under CI failed, without a server), dropped afterwards."""
    if request.param == "sqlite":
        yield TestDatabase("sqlite", "sqlite:///state/jobs.db", tmp_path / "state" / "jobs.db")
        return
    request.getfixturevalue("postgres_server")
    async with fresh_database() as url:
        yield TestDatabase("postgres", url, url)
