"""``muxproxy copy-db --from URL --to URL [--force]``: stop the gateway, copy, check,
point ``database.url`` at the target, start again (docs/operations.md)."""

from __future__ import annotations

import asyncio
import sys

from muxproxy.settings import SettingsError, sqlite_path
from muxproxy.store import check_store_url, open_store
from muxproxy.store.copy import CopyRefused, CopyReport, copy_database


def copy_db(source: str, target: str, *, force: bool) -> int:
    """0 when the copy matches the source, 1 when it does not (or a database failed
    on the way), 2 when it was refused before anything was written."""
    try:
        for url in (source, target):
            check_store_url(url)
    except SettingsError as exc:
        print(f"muxproxy: copy-db: {exc}", file=sys.stderr)
        return 2
    if source == target:
        print("muxproxy: copy-db: --from and --to name the same database", file=sys.stderr)
        return 2
    if source.startswith("sqlite:") and not sqlite_path(source).is_file():
        print(f"muxproxy: copy-db: no database file at {sqlite_path(source)}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_copy(source, target, force))
    except CopyRefused as exc:
        print(f"muxproxy: copy-db: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the command's edge: say what failed, never a traceback
        print(f"muxproxy: copy-db: {type(exc).__name__}: {exc} (the target was left as it "
              f"was: the copy is one transaction)", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


async def _copy(source_url: str, target_url: str, force: bool) -> CopyReport:
    # Opening a store brings its schema to this version, so both sides have the same
    # tables and columns.
    source, target = open_store(source_url), open_store(target_url)
    await source.open()
    try:
        await target.open()
        try:
            return await copy_database(source, target, force=force)
        finally:
            await target.aclose()
    finally:
        await source.aclose()
