"""Ordered SQL migrations per service, applied under an advisory lock.

Each source is a (namespace, folder) pair: the event-bus tables ship with ``eventbus`` and
every service applies them next to its own. Files are ``NNNN_name.sql``, applied in order,
each in its own transaction, and recorded with a checksum so that an edited, already-applied
file is caught instead of silently diverging.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

log = structlog.get_logger(__name__)

_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x6D616C6C  # "mall": one migrator at a time per database


@dataclass(frozen=True)
class Migration:
    namespace: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def discover(namespace: str, folder: Path) -> list[Migration]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        found.append(Migration(namespace, int(match[1]), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{folder}: two migrations share a version number")
    return found


async def migrate(dsn: str, sources: list[tuple[str, Path]]) -> list[str]:
    """Apply what is missing; return the names applied. Safe to run from many replicas."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   namespace text NOT NULL,
                   version integer NOT NULL,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (namespace, version))"""
        )
        done = {
            (r["namespace"], r["version"]): r["checksum"]
            for r in await conn.fetch("SELECT namespace, version, checksum FROM schema_migrations")
        }
        for namespace, folder in sources:
            for m in discover(namespace, folder):
                key = (m.namespace, m.version)
                if key in done:
                    if done[key] != m.checksum:
                        raise MigrationError(
                            f"{m.namespace}/{m.name} changed after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (namespace, version, name, checksum)"
                        " VALUES ($1, $2, $3, $4)",
                        m.namespace,
                        m.version,
                        m.name,
                        m.checksum,
                    )
                applied_now.append(f"{m.namespace}/{m.name}")
                log.info("migration_applied", migration=f"{m.namespace}/{m.name}")
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        finally:
            await conn.close()
    return applied_now
