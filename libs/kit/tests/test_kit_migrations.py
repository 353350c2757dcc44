"""kit.migrations against a real PostgreSQL: ordered, recorded, checked, one migrator at a time."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import asyncpg
import pytest
from kit.migrations import MigrationError, migrate
from mall_testing.plugin import FreshDatabase


@pytest.fixture
async def dsn(fresh_database: FreshDatabase) -> str:
    return await fresh_database("kit_migrations")


def _write(folder: Path, name: str, sql: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(sql)
    return path


async def _fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


async def _recorded(dsn: str) -> list[tuple[str, int, str, str]]:
    rows = await _fetch(
        dsn, "SELECT namespace, version, name, checksum FROM schema_migrations ORDER BY applied_at"
    )
    return [(r["namespace"], r["version"], r["name"], r["checksum"]) for r in rows]


def _sha(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


async def test_applies_files_in_order_and_records_them(dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    create = "CREATE TABLE accounts (id text PRIMARY KEY);"
    # 0010 needs 0002's column and 0002 needs 0001's table: any other order fails.
    add_column = "ALTER TABLE accounts ADD COLUMN balance bigint NOT NULL DEFAULT 0;"
    add_index = "CREATE INDEX accounts_balance ON accounts (balance);"
    _write(folder, "0010_index_balance.sql", add_index)
    _write(folder, "0001_accounts.sql", create)
    _write(folder, "0002_balance.sql", add_column)

    applied = await migrate(dsn, [("points", folder)])

    assert applied == [
        "points/0001_accounts.sql",
        "points/0002_balance.sql",
        "points/0010_index_balance.sql",
    ]
    assert await _recorded(dsn) == [
        ("points", 1, "0001_accounts.sql", _sha(create)),
        ("points", 2, "0002_balance.sql", _sha(add_column)),
        ("points", 10, "0010_index_balance.sql", _sha(add_index)),
    ]
    indexes = await _fetch(dsn, "SELECT indexname FROM pg_indexes WHERE tablename = 'accounts'")
    assert "accounts_balance" in {r["indexname"] for r in indexes}


async def test_rerun_applies_nothing_and_a_new_file_only_itself(dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    _write(folder, "0001_accounts.sql", "CREATE TABLE accounts (id text PRIMARY KEY);")
    assert await migrate(dsn, [("points", folder)]) == ["points/0001_accounts.sql"]

    assert await migrate(dsn, [("points", folder)]) == []

    _write(folder, "0002_ledger.sql", "CREATE TABLE ledger (id bigint PRIMARY KEY);")
    assert await migrate(dsn, [("points", folder)]) == ["points/0002_ledger.sql"]
    assert [row[2] for row in await _recorded(dsn)] == ["0001_accounts.sql", "0002_ledger.sql"]


async def test_namespaces_version_independently(dsn: str, tmp_path: Path) -> None:
    _write(tmp_path / "a", "0001_first.sql", "CREATE TABLE a_things (id int);")
    _write(tmp_path / "b", "0001_first.sql", "CREATE TABLE b_things (id int);")

    applied = await migrate(dsn, [("alpha", tmp_path / "a"), ("beta", tmp_path / "b")])

    assert applied == ["alpha/0001_first.sql", "beta/0001_first.sql"]
    assert [row[:2] for row in await _recorded(dsn)] == [("alpha", 1), ("beta", 1)]


async def test_an_edited_applied_file_is_refused(dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    path = _write(folder, "0001_accounts.sql", "CREATE TABLE accounts (id text PRIMARY KEY);")
    await migrate(dsn, [("points", folder)])
    path.write_text("CREATE TABLE accounts (id text PRIMARY KEY, extra int);")
    _write(folder, "0002_ledger.sql", "CREATE TABLE ledger (id bigint PRIMARY KEY);")

    with pytest.raises(MigrationError, match=r"points/0001_accounts\.sql changed"):
        await migrate(dsn, [("points", folder)])

    assert [row[2] for row in await _recorded(dsn)] == ["0001_accounts.sql"]


@pytest.mark.parametrize("bad_name", ["1_short.sql", "0002-dash.sql", "0002_Upper.sql"])
async def test_a_badly_named_file_is_refused(dsn: str, tmp_path: Path, bad_name: str) -> None:
    folder = tmp_path / "sql"
    _write(folder, "0001_accounts.sql", "CREATE TABLE accounts (id text PRIMARY KEY);")
    _write(folder, bad_name, "CREATE TABLE other (id int);")

    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        await migrate(dsn, [("points", folder)])

    tables = await _fetch(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert "accounts" not in {r["tablename"] for r in tables}


async def test_two_files_with_one_version_are_refused(dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    _write(folder, "0001_accounts.sql", "CREATE TABLE accounts (id text PRIMARY KEY);")
    _write(folder, "0001_ledger.sql", "CREATE TABLE ledger (id bigint PRIMARY KEY);")

    with pytest.raises(MigrationError, match="share a version"):
        await migrate(dsn, [("points", folder)])


async def test_a_failing_file_is_rolled_back_and_not_recorded(dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    _write(folder, "0001_accounts.sql", "CREATE TABLE accounts (id text PRIMARY KEY);")
    broken = _write(folder, "0002_ledger.sql", "CREATE TABLE ledger (id int); SELECT 1 / 0;")

    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(dsn, [("points", folder)])

    assert [row[2] for row in await _recorded(dsn)] == ["0001_accounts.sql"]
    tables = {r["tablename"] for r in await _fetch(dsn, "SELECT tablename FROM pg_tables")}
    assert "ledger" not in tables

    broken.write_text("CREATE TABLE ledger (id int);")
    assert await migrate(dsn, [("points", folder)]) == ["points/0002_ledger.sql"]


async def test_concurrent_migrators_apply_each_file_once(dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "sql"
    # The sleep holds the first migrator inside its transaction so that the others arrive
    # while it works: without the advisory lock they would apply 0001 again and fail.
    _write(
        folder,
        "0001_accounts.sql",
        "SELECT pg_sleep(0.3); CREATE TABLE accounts (id text PRIMARY KEY);",
    )
    _write(folder, "0002_ledger.sql", "CREATE TABLE ledger (id bigint PRIMARY KEY);")

    results = await asyncio.gather(*(migrate(dsn, [("points", folder)]) for _ in range(4)))

    assert sorted(name for applied in results for name in applied) == [
        "points/0001_accounts.sql",
        "points/0002_ledger.sql",
    ]
    assert [row[2] for row in await _recorded(dsn)] == ["0001_accounts.sql", "0002_ledger.sql"]
