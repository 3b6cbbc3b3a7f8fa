"""Backup and restore at N changes: the Jobs' own scripts against a real PostgreSQL.

    python -m benchmarks.backup [--changes 100000] [--users 1000]

The log is seeded through the SST store's real commit path (``SstStore.commit``: the same
``beco_commit_batch`` transaction, Merkle tree and signed head per batch as the SST), batched by the
store's single writer (with ``synchronous_commit = off`` for the seeded database only: the
same transactions, without waiting for a disk flush each). Then the backup Job's script (``beco_operator.backup.BACKUP_SCRIPT``:
``pg_dump --format=custom`` and the head read back from the dump) and the restore Job's script
(``pg_restore --single-transaction``) run with this machine's PostgreSQL binaries, and the SST
store reopens the restored database (it verifies every leaf and the latest head). Prints the
times and sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from beco_node.pg import EmbeddedPostgres
from beco_node.pg.binaries import find_binaries
from beco_node.sst.records import CommitEntry
from beco_node.sst.store import SstStore
from beco_operator import backup
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

STAMP = "20261130T000000Z"


def _env(dsn: str, tmp: Path, **extra: str) -> dict[str, str]:
    u = urlsplit(dsn)
    return {
        "PATH": f"{find_binaries().bin_dir}:/usr/bin:/bin",
        "PGHOST": u.hostname or "127.0.0.1",
        "PGPORT": str(u.port or 5432),
        "PGUSER": u.username or "postgres",
        "PGPASSWORD": u.password or "",
        "PGDATABASE": u.path.lstrip("/"),
        "HOME": str(tmp),
        "BACKUP_DIR": str(tmp / "pvc"),
        "TERMINATION_LOG": str(tmp / "termination-log"),
        **extra,
    }


def _run(script: str, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    out = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"script failed: {out.stderr}")
    return time.monotonic() - t0


async def main(changes: int, users: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="beco-pg-bench-"))
    os.chmod(base, 0o755)
    pg = EmbeddedPostgres(base / "pg")
    dsn = await pg.start()
    key = Ed25519PrivateKey.generate()
    try:
        admin = await asyncpg.connect(dsn)
        await admin.execute('CREATE DATABASE "src"')
        await admin.execute('CREATE DATABASE "dst"')
        # the seed need not survive a crash: no fsync wait per commit (the commit path is the same)
        await admin.execute('ALTER DATABASE "src" SET synchronous_commit = off')
        await admin.close()
        src, dst = (dsn.rsplit("/", 1)[0] + f"/{n}" for n in ("src", "dst"))
        store = await SstStore.open(src, key)
        t0 = time.monotonic()
        seq = [0] * users
        done = 0
        while done < changes:
            batch = []
            for _ in range(min(users, changes - done)):
                u = done % users
                seq[u] += 1
                batch.append(
                    CommitEntry(
                        proposal_id=f"p{done:08d}",
                        user_id=f"user{u:05d}",
                        sequence=seq[u],
                        kind="create_user" if seq[u] == 1 else "set_first_name",
                        state=os.urandom(96),
                        leaf_data=os.urandom(160),
                        committed_ms=1_700_000_000_000 + done,
                    )
                )
                done += 1
            await asyncio.gather(*(store.commit(e) for e in batch))
        seeded = time.monotonic() - t0
        head = store.tree_head()
        await store.close()

        tmp = base / "work"
        (tmp / "pvc").mkdir(parents=True)
        env = _env(
            src,
            tmp,
            BECO_NETWORK="bench",
            BECO_NAMESPACE="default",
            BECO_STAMP=STAMP,
            BECO_KEY_SECRET=backup.key_secret("bench", STAMP),
            BECO_SPEC="{}",
        )
        dump_s = _run(backup.BACKUP_SCRIPT, env)
        path = backup.dump_path("bench", STAMP)
        meta = json.loads((tmp / "pvc" / backup.meta_path(path)).read_text())
        assert meta["tree_size"] == head.tree_size == changes
        renv = _env(dst, tmp, BECO_RESTORE_PATH=path, BECO_RESTORE_PVC="bench")
        restore_s = _run(backup.RESTORE_SCRIPT, renv)
        t1 = time.monotonic()
        store = await SstStore.open(dst, key)  # verifies every leaf and the head
        open_s = time.monotonic() - t1
        assert store.tree_head() == head
        await store.close()
        admin = await asyncpg.connect(src)
        db_bytes = await admin.fetchval("select pg_database_size('src')")
        await admin.close()
        print(
            json.dumps(
                {
                    "changes": changes,
                    "users": users,
                    "seed_s": round(seeded, 1),
                    "database_bytes": db_bytes,
                    "dump_bytes": meta["dump_bytes"],
                    "pg_dump_s": meta["dump_ms"] / 1000,
                    "backup_script_s": round(dump_s, 2),
                    "restore_script_s": round(restore_s, 2),
                    "sst_open_restored_s": round(open_s, 2),
                    "postgres": str(find_binaries().major),
                },
                indent=2,
            )
        )
    finally:
        await pg.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=1000)
    a = ap.parse_args()
    asyncio.run(main(a.changes, a.users))
