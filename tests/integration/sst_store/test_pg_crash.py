"""A postmaster killed with SIGKILL: the next start recovers, whatever it left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import asyncpg
import pytest
from beco_node.pg import EmbeddedPostgres, PostgresError

pytestmark = pytest.mark.postgres


def _lock_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0])


async def test_kill_9_with_an_open_transaction_then_restart_keeps_committed_data(
    pg_dir: Path,
) -> None:
    pg = EmbeddedPostgres(pg_dir)
    await pg.start()
    try:
        conn = await asyncpg.connect(pg.dsn)
        await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
        busy = await asyncpg.connect(pg.dsn)  # a backend mid-transaction when the server dies
        await busy.execute("BEGIN; INSERT INTO kept VALUES (2)")
        pid = pg.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for c in (conn, busy):
            c.terminate()
        assert not pg.running or await _exited(pg)
        assert (pg.pgdata / "postmaster.pid").exists()  # the stale lock is left behind
        dsn = await pg.start()
        assert dsn == pg.dsn
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT array_agg(x ORDER BY x) FROM kept") == [1]
        await conn.close()
    finally:
        await pg.stop()


async def test_a_recycled_pid_in_the_stale_lock_does_not_block_the_start(pg_dir: Path) -> None:
    pg = EmbeddedPostgres(pg_dir)
    await pg.start()
    pid = pg.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert await _exited(pg)
    # The dead postmaster's pid now belongs to another live process of the same user (a
    # restarted node when all run as one user, a container after a restart): PostgreSQL
    # alone then refuses to start ("lock file ... already exists").
    owner = pg.pgdata.stat().st_uid
    other = subprocess.Popen(  # noqa: ASYNC220 - a helper process, started once
        ["sleep", "60"], user=owner if owner != os.geteuid() else None
    )
    try:
        lock = pg.pgdata / "postmaster.pid"
        lines = lock.read_text().splitlines()
        lock.write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")
        await pg.start()
        conn = await asyncpg.connect(pg.dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        assert other.poll() is None  # the unrelated process is untouched
        assert _lock_pid(pg) == pg.pid
    finally:
        other.kill()
        other.wait()
        await pg.stop()


async def test_the_lock_of_a_live_server_is_never_removed(pg_dir: Path) -> None:
    async with EmbeddedPostgres(pg_dir) as first:
        assert first.pid is not None
        with pytest.raises(PostgresError, match="already running"):
            await EmbeddedPostgres(pg_dir).start()
        assert _lock_pid(first) == first.pid
        conn = await asyncpg.connect(first.dsn)
        await conn.close()


async def _exited(pg: EmbeddedPostgres) -> bool:
    for _ in range(200):
        if not pg.running:
            return True
        await asyncio.sleep(0.05)
    return False
