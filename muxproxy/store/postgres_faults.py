"""Where PostgreSQL's driver errors become the domain's :class:`StoreUnavailable`.

Every statement of :class:`~muxproxy.store.postgres.PostgresStore` runs on a pooled
connection taken in ``PostgresStore._connection``, which maps its errors here: a
server that cannot be reached, a connection lost or terminated, a statement timeout,
a serialization failure or deadlock, the server shutting down or out of connections
are all answered 503 with Retry-After, as SQLite's faults are
(:mod:`muxproxy.store.sqlite_faults`). A constraint or a programming error stays
what it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from muxproxy.errors import StoreUnavailable
from muxproxy.logs import get_logger

log = get_logger("muxproxy.store")

# SQLSTATE classes of a database that cannot do its work right now: 08 connection
# exception, 40 transaction rollback (serialization failure, deadlock), 53
# insufficient resources, 57 operator intervention (statement timeout, shutdown),
# 58 system error.
_FAULT_CLASSES = frozenset({"08", "40", "53", "57", "58"})


def is_fault(exc: BaseException) -> bool:
    if isinstance(exc, StoreUnavailable):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _FAULT_CLASSES
    # The server gone or never there: refused, reset, a connect that timed out,
    # a pooled connection closed under a statement.
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc)
    return isinstance(exc, OSError | TimeoutError)


def mapped_error(exc: BaseException) -> BaseException:
    """``exc`` as the caller should see it."""
    if isinstance(exc, StoreUnavailable) or not is_fault(exc):
        return exc
    log.warning("database fault", error=str(exc) or type(exc).__name__,
                code=getattr(exc, "sqlstate", None))
    error = StoreUnavailable()
    error.__cause__ = exc
    return error


@contextmanager
def faults_mapped() -> Iterator[None]:
    try:
        yield
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        error = mapped_error(exc)
        if error is exc:
            raise
        raise error from exc
