"""Where SQLite's driver errors become the domain's :class:`StoreUnavailable`.

Every statement of :class:`~muxproxy.store.sqlite.SqliteStore` passes through one
of its four primitives (``_fetch``, ``_in_reader``, ``_in_writer``, ``_write``),
and each maps its errors here, so no ``sqlite3`` error reaches a surface as a
bare 500. Only faults of the database itself are mapped; a constraint or a
programming error (``no such table``) stays what it is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from muxproxy.errors import StoreUnavailable
from muxproxy.logs import get_logger

log = get_logger("muxproxy.store")

# Primary result codes of a database that cannot do its work right now.
_FAULTS = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL,
})


def is_fault(exc: BaseException) -> bool:
    if isinstance(exc, StoreUnavailable):
        return True
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.IntegrityError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _FAULTS


def mapped_error(exc: BaseException) -> BaseException:
    """``exc`` as the caller should see it."""
    if isinstance(exc, StoreUnavailable) or not is_fault(exc):
        return exc
    log.warning("database fault", error=str(exc),
                code=getattr(exc, "sqlite_errorname", None))
    error = StoreUnavailable()
    error.__cause__ = exc
    return error


@contextmanager
def faults_mapped() -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as exc:
        error = mapped_error(exc)
        if error is exc:
            raise
        raise error from exc
