"""Migrating a PostgreSQL database to this muxproxy's schema, once, whoever asks.

The whole run holds a session advisory lock: replicas starting together queue on
it, the first migrates, the others find the schema current. Each migration commits
with its version, so a run stopped halfway resumes where it stopped.
"""

from __future__ import annotations

from muxproxy.store.pg_schema import PG_MIGRATIONS
from muxproxy.store.postgres_tx import Db

# The advisory lock's key: any constant unlikely to collide with another
# application's locks on the same database ("muxprox" in ASCII).
MIGRATION_LOCK = 0x6D7578_70726F78


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer muxproxy than this one."""


async def schema_version(db: Db) -> int:
    exists = await db.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))


async def migrate(db: Db, *, where: str) -> int:
    """Bring the database to the newest version; return how many migrations ran."""
    await db.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        version = await schema_version(db)
        if version > len(PG_MIGRATIONS):
            raise SchemaTooNew(f"{where}: schema version {version} is newer than this "
                               f"muxproxy ({len(PG_MIGRATIONS)}); upgrade muxproxy")
        for number, script in enumerate(PG_MIGRATIONS[version:], start=version + 1):
            async with db.transaction():
                await db.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                                 "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ "
                                 "NOT NULL DEFAULT now())")
                await db.execute(script)
                await db.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
        return len(PG_MIGRATIONS) - version
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
