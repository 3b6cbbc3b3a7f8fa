"""benchmarks.commit_floor on real processes: the floor under "commit p50, 1 in flight"
measures what it says (every commit durable at the SST when given a database) and leaves
nothing behind: no process, no table."""

from __future__ import annotations

import asyncio
import multiprocessing as mp

import asyncpg

from benchmarks import commit_floor


async def _commits(dsn: str) -> int:
    db = await asyncpg.connect(dsn)
    try:
        await db.execute("SELECT pg_stat_clear_snapshot()")
        n: int = await db.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return n
    finally:
        await db.close()


async def test_floor_without_a_database() -> None:
    f = await asyncio.to_thread(commit_floor.measure, 30)
    assert 0 < f["p50_ms"] <= f["p99_ms"]
    assert set(f["cpu_ms"]) == {"user", "validator", "sst"}
    assert all(v > 0 for v in f["cpu_ms"].values())
    assert f["server_cpu_ms"] == sum(f["cpu_ms"].values())
    assert not mp.active_children()  # every node process stopped


async def test_floor_commits_each_change_durably_and_drops_its_table(dsn: str) -> None:
    before = await _commits(dsn)
    f = await asyncio.to_thread(commit_floor.measure, 30, dsn)
    assert f["p50_ms"] > 0
    # 100 warm-up commits and 30 timed ones, each its own transaction (stats flush lazily)
    for _ in range(50):
        if await _commits(dsn) - before >= 130:
            break
        await asyncio.sleep(0.1)
    assert await _commits(dsn) - before >= 130
    db = await asyncpg.connect(dsn)
    try:
        assert await db.fetchval("SELECT to_regclass($1)", commit_floor.TABLE) is None
    finally:
        await db.close()
    assert not mp.active_children()
