from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.databases import database
from tests.support.gateway import RunningGateway, base_config, run_gateway
from tests.support.postgres import pg, postgres_server, postgres_url
from tests.support.private_postgres import stoppable_postgres
from tests.support.s3 import s3_bucket, s3_server

ROOT = Path(__file__).resolve().parent.parent
# PostgreSQL (a database, a store on it) and S3 fixtures, for any suite
# (tests/support/postgres.py and s3.py have the skip/fail rule), and a database on
# either backend (tests/support/databases.py).
__all__ = ["database", "pg", "postgres_server", "postgres_url", "s3_bucket", "s3_server",
           "stoppable_postgres"]


@pytest.fixture(autouse=True, scope="session")
def children_import_this_checkout() -> Iterator[None]:
    """Gateway and CLI processes the tests start import muxproxy from this checkout,
    wherever the environment's installed copy points (another worktree, say)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), before) if p)
    yield
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return base_config(tmp_path)


@pytest.fixture
async def gateway(config: dict[str, Any]) -> AsyncIterator[RunningGateway]:
    async with run_gateway(config) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session, for driving adapters against their fakes."""
    async with aiohttp.ClientSession() as session:
        yield session
