"""mall_testing against real servers: the embedded ones and the plugin's fixtures."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from mall_testing.embedded import EmbeddedNats, EmbeddedPostgres
from mall_testing.plugin import FreshDatabase, Nats, database_url

pytest_plugins = ["pytester"]


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(uid_line.split()[1])


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder the unprivileged server user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mall-testing-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- EmbeddedPostgres -------------------------------------------------------------------------


async def test_embedded_postgres_commits_and_cleans_up() -> None:
    with EmbeddedPostgres() as pg:
        assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        assert (pg.data_dir / "PG_VERSION").is_file()
        assert pg.process is not None
        if os.geteuid() == 0:  # PostgreSQL refuses root: the postmaster must run as nobody
            assert _uid_of(pg.process.pid) == pwd.getpwnam("nobody").pw_uid

        conn = await asyncpg.connect(pg.url)
        try:
            assert await conn.fetchval("SHOW fsync") == "on"
            assert await conn.fetchval("SHOW max_connections") == "300"
            assert await conn.fetchval("SHOW shared_buffers") == "128MB"
            assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
            await conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL)")
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1, '积分'), (2, 'points')")
        finally:
            await conn.close()

        # The reader stays connected through the shutdown: a fast shutdown does not wait for
        # clients to leave (a smart one would, and stop() would hang).
        reader = await asyncpg.connect(pg.url)
        rows = await reader.fetch("SELECT id, note FROM t ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "积分"), (2, "points")]
        base_dir, port = pg.base_dir, pg.port
        started_stopping = time.monotonic()

    try:
        assert time.monotonic() - started_stopping < 10
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await reader.fetchval("SELECT 1")
    finally:
        reader.terminate()
    assert not base_dir.exists()
    assert not pg.running
    assert not _accepts_tcp(port)


async def test_embedded_postgres_keeps_a_given_base_dir(shared_dir: Path) -> None:
    with EmbeddedPostgres(shared_dir) as pg:
        conn = await asyncpg.connect(pg.url)
        try:
            await conn.execute("CREATE TABLE kept (v text)")
            await conn.execute("INSERT INTO kept VALUES ('survives a restart')")
        finally:
            await conn.close()

    assert (shared_dir / "data" / "PG_VERSION").is_file()
    assert (shared_dir / "postgres.log").is_file()

    with EmbeddedPostgres(shared_dir) as pg:  # reuses the cluster, no initdb
        conn = await asyncpg.connect(pg.url)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == "survives a restart"
        finally:
            await conn.close()


def test_embedded_postgres_reports_a_failed_start(occupied_port: int) -> None:
    pg = EmbeddedPostgres(port=occupied_port, startup_timeout=10)
    with pytest.raises(RuntimeError, match="did not start") as failure:
        pg.start()
    assert "Address already in use" in str(failure.value)
    assert not pg.running
    assert not pg.base_dir.exists()


# -- EmbeddedNats -----------------------------------------------------------------------------


async def test_embedded_nats_runs_jetstream_and_stops() -> None:
    with EmbeddedNats() as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="EMBEDDED", subjects=["embedded.>"])
            ack = await js.publish("embedded.thing.happened", b"payload")
            assert (ack.stream, ack.seq) == ("EMBEDDED", 1)
            message = await js.get_msg("EMBEDDED", 1)
            assert message.data == b"payload"
        finally:
            await nc.close()
        assert any(server.store_dir.rglob("*")), "JetStream wrote nothing to the -sd store dir"
        base_dir, port = server.base_dir, server.port

    assert not base_dir.exists()
    assert not server.running
    assert not _accepts_tcp(port)


def test_embedded_nats_reports_a_failed_start(occupied_port: int) -> None:
    server = EmbeddedNats(port=occupied_port, startup_timeout=10)
    with pytest.raises(RuntimeError, match="did not start") as failure:
        server.start()
    assert "address already in use" in str(failure.value).lower()
    assert not server.running
    assert not server.base_dir.exists()


# -- plugin fixtures ------------------------------------------------------------------------


def test_database_url_replaces_only_the_database() -> None:
    assert (
        database_url("postgresql://u:p@db:5433/postgres?sslmode=disable", "points_1")
        == "postgresql://u:p@db:5433/points_1?sslmode=disable"
    )


async def test_fresh_database_gives_distinct_empty_databases(
    fresh_database: FreshDatabase, postgres_url: str
) -> None:
    first, second = await fresh_database("mt"), await fresh_database("mt")
    assert first != second

    names = []
    for url in (first, second):
        conn = await asyncpg.connect(url)
        try:
            names.append(await conn.fetchval("SELECT current_database()"))
            tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            assert await conn.fetchval(tables) == 0
        finally:
            await conn.close()
    assert all(re.fullmatch(r"mt_[0-9a-f]{10}", name) for name in names)

    conn = await asyncpg.connect(first)
    try:
        await conn.execute("CREATE TABLE only_in_first (id int)")
    finally:
        await conn.close()
    conn = await asyncpg.connect(second)
    try:
        assert await conn.fetchval("SELECT to_regclass('only_in_first')") is None
    finally:
        await conn.close()


async def test_fresh_database_rejects_unsafe_prefixes(fresh_database: FreshDatabase) -> None:
    with pytest.raises(ValueError, match="prefix"):
        await fresh_database('x"; DROP DATABASE postgres; --')


async def test_jetstream_fixture_is_connected(jetstream: Nats, unique_id: str) -> None:
    assert jetstream.nc.is_connected
    await jetstream.js.add_stream(name=f"FIXTURE_{unique_id}", subjects=[f"{unique_id}.>"])
    ack = await jetstream.js.publish(f"{unique_id}.event", b"x")
    assert ack.stream == f"FIXTURE_{unique_id}"


def test_unique_id_is_short_and_stable_within_a_test(
    unique_id: str, request: pytest.FixtureRequest
) -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", unique_id)
    assert request.getfixturevalue("unique_id") == unique_id


_INNER_TESTS = """
import json, os, pathlib
import asyncpg

OUT = pathlib.Path(os.environ["MALL_TESTING_OUT"])


async def test_leaves_databases_and_a_stream(fresh_database, jetstream, postgres_url, nats_url):
    assert postgres_url == os.environ["DATABASE_URL"]
    assert nats_url == os.environ["NATS_URL"]
    urls = [await fresh_database("inner"), await fresh_database("inner")]
    names = []
    for url in urls:
        conn = await asyncpg.connect(url)
        names.append(await conn.fetchval("SELECT current_database()"))
        await conn.close()
    OUT.write_text(json.dumps(names))
    await jetstream.js.add_stream(name="LEFTOVER", subjects=["leftover.>"])
    await jetstream.js.publish("leftover.thing", b"1")
    assert [s.config.name for s in await jetstream.js.streams_info()] == ["LEFTOVER"]


async def test_next_test_starts_without_streams(jetstream):
    assert await jetstream.js.streams_info() == []
"""


async def test_fixtures_clean_up_between_tests_and_modules(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    postgres_url: str,
    nats_url: str,
) -> None:
    """A separate pytest run: its databases are dropped at module end, streams between tests."""
    out = pytester.path / "created.json"
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    monkeypatch.setenv("NATS_URL", nats_url)
    monkeypatch.setenv("MALL_TESTING_OUT", str(out))
    pytester.makepyfile(test_inner=textwrap.dedent(_INNER_TESTS))

    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-W",
        "error",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=session",
        "-o",
        "asyncio_default_test_loop_scope=session",
        timeout=120,
    )
    result.assert_outcomes(passed=2)

    names = json.loads(out.read_text())
    assert len(set(names)) == 2
    assert all(re.fullmatch(r"inner_[0-9a-f]{10}", name) for name in names)

    conn = await asyncpg.connect(postgres_url)
    try:
        remaining = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname = any($1::text[])", names
        )
    finally:
        await conn.close()
    assert remaining == []
