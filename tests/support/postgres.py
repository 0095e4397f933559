"""PostgreSQL for the tests: a fresh database per test on the server named by
``MUXPROXY_TEST_POSTGRES_URL``, dropped afterwards.

The one rule for a missing server lives here: under ``CI=true`` a PostgreSQL test
fails (CI must run it); elsewhere it is skipped with a message saying how to get a
server. Suites take :func:`postgres_url`, or :func:`pg` for a store open on it
(both registered in ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

from muxproxy.store.postgres import PostgresStore

ENV = "MUXPROXY_TEST_POSTGRES_URL"
# The admin connection: it creates and drops the tests' databases.
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
DATABASE_PREFIX = "muxproxy_test_"


def admin_url() -> str:
    return os.environ.get(ENV) or DEFAULT_ADMIN_URL


def database_url(name: str) -> str:
    """The admin URL pointed at database ``name``."""
    return urlunsplit(urlsplit(admin_url())._replace(path=f"/{name}"))


def unavailable(reason: str) -> NoReturn:
    message = (f"PostgreSQL is not available ({reason}). Set {ENV} (default "
               f"{DEFAULT_ADMIN_URL}) to a server where that user may CREATE DATABASE, or "
               f"start one: `pg_ctlcluster 15 main start`, or `docker run -d -p 5432:5432 "
               f"-e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test postgres:15`")
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def _reachable(url: str) -> str | None:
    """None when ``url`` answers, else why not. Run in a thread of its own, so its
    event loop never touches the one pytest-asyncio gives the tests."""
    import asyncpg

    outcome: list[str | None] = []

    async def connect() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    def run() -> None:
        try:
            asyncio.run(connect())
            outcome.append(None)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return outcome[0] if outcome else "the check did not finish"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL, once the server answered (checked once per session)."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        unavailable("asyncpg is not installed: pip install -e '.[test]'")
    problem = _reachable(admin_url())
    if problem is not None:
        unavailable(f"{admin_url()}: {problem}")
    return admin_url()


async def create_database() -> str:
    import asyncpg

    name = f"{DATABASE_PREFIX}{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_database(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(admin_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, empty database (not migrated: a store migrates it), dropped on exit."""
    name = await create_database()
    try:
        yield database_url(name)
    finally:
        await drop_database(name)


@pytest.fixture
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test. Per test, not per module: creating one
    costs a few tens of milliseconds, and no test sees another's rows."""
    async with fresh_database() as url:
        yield url


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[PostgresStore]:
    """A PostgreSQL store, migrated and open, on a fresh database."""
    store = PostgresStore(postgres_url, pool_size=4)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()
