"""EmbeddedPostgres: real server lifecycle, data across restarts, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from beco_node.pg import EmbeddedPostgres, PostgresError, free_port
from beco_node.pg.binaries import find_binaries

pytestmark = pytest.mark.postgres


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is not running
    except FileNotFoundError:
        return False


async def test_start_stop_restart_keeps_data(pg_dir: Path) -> None:
    pg = EmbeddedPostgres(pg_dir)
    async with pg:
        assert pg.dsn.startswith("postgresql://beco@127.0.0.1:")
        conn = await asyncpg.connect(pg.dsn)
        await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        await conn.close()
        pid = pg.pid
        assert pid is not None and _alive(pid)
        if os.geteuid() == 0:
            assert (pg_dir / "pgdata").stat().st_uid != 0  # never runs as root
    assert not pg.running
    assert not _alive(pid)
    await pg.stop()  # idempotent

    async with EmbeddedPostgres(pg_dir) as again:
        assert again.dsn == pg.dsn  # the port is reused when free
        conn = await asyncpg.connect(again.dsn)
        assert await conn.fetchval("SELECT x FROM kept") == 42
        await conn.close()


async def test_explicit_port_taken_is_a_clear_error(pg_dir: Path) -> None:
    port = free_port()
    async with EmbeddedPostgres(pg_dir, port=port) as first:
        assert first.port == port
        with pytest.raises(PostgresError, match="taken"):
            await EmbeddedPostgres(pg_dir.parent / "other", port=port).start()


def test_server_dies_with_its_parent(pg_dir: Path) -> None:
    script = (
        "import asyncio, os, sys\n"
        "from pathlib import Path\n"
        "from beco_node.pg import EmbeddedPostgres\n"
        "async def main():\n"
        f"    pg = EmbeddedPostgres(Path({str(pg_dir)!r}))\n"
        "    await pg.start()\n"
        "    print(pg.pid, flush=True)\n"
        "    os._exit(0)  # no clean stop\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    pid = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the orphaned PostgreSQL server is still running"


def test_binaries_match_the_data_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    newest = find_binaries()
    assert (newest.bin_dir / "postgres").is_file()
    assert find_binaries(newest.major) == newest
    with pytest.raises(PostgresError, match="made by PostgreSQL 7"):
        find_binaries(7)
    monkeypatch.setenv("BECO_PG_BINDIR", str(tmp_path))
    with pytest.raises(PostgresError, match="no PostgreSQL server binaries"):
        find_binaries()


async def test_a_non_cluster_directory_is_refused(pg_dir: Path) -> None:
    (pg_dir / "pgdata").mkdir(parents=True)
    (pg_dir / "pgdata" / "stray").write_text("not a cluster")
    with pytest.raises(PostgresError, match="holds no PostgreSQL cluster"):
        await EmbeddedPostgres(pg_dir).start()


async def test_second_server_on_the_same_data_is_refused(pg_dir: Path) -> None:
    async with EmbeddedPostgres(pg_dir) as first:
        with pytest.raises(PostgresError, match=r"postmaster\.pid"):
            await EmbeddedPostgres(pg_dir).start()
        conn = await asyncpg.connect(first.dsn)  # the first one is unharmed
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
