"""The backup and restore Jobs' shell scripts (beco_operator.backup), run here against a real
PostgreSQL with the SST store's own commits: the metadata names the head in the dump, a restore
into an empty database reopens with the same key and the same log, a restore over a non-empty
log is refused and changes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from beco_node.keys import public_key_bytes
from beco_node.merkle import verify_consistency, verify_tree_head
from beco_node.pg.binaries import find_binaries
from beco_node.sst.store import SstStore
from beco_operator import backup
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .conftest import FakeClock, make_entry

pytestmark = pytest.mark.postgres

STAMP = "20261130T080000Z"


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


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=120
    )


async def _new_db(dsn: str, name: str) -> str:
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return dsn.rsplit("/", 1)[0] + "/" + name


async def test_backup_then_restore_reopens_the_same_log(
    dsn: str, key: Ed25519PrivateKey, clock: FakeClock, tmp_path: Path
) -> None:
    store = await SstStore.open(dsn, key, clock=clock)
    try:
        for i in range(20):
            await store.commit(make_entry(f"u{i % 4}", i // 4 + 1))
        head = store.tree_head()
    finally:
        await store.close()

    (tmp_path / "pvc").mkdir()
    env = _env(
        dsn,
        tmp_path,
        BECO_NETWORK="demo",
        BECO_NAMESPACE="default",
        BECO_STAMP=STAMP,
        BECO_KEY_SECRET=backup.key_secret("demo", STAMP),
        BECO_SPEC=json.dumps({"zones": ["a"]}),
    )
    out = _run(backup.BACKUP_SCRIPT, env)
    assert out.returncode == 0, out.stderr
    path = backup.dump_path("demo", STAMP)
    meta = json.loads((tmp_path / "pvc" / backup.meta_path(path)).read_text())
    assert meta == json.loads(out.stdout.strip().splitlines()[-1])
    assert meta["tree_size"] == head.tree_size == 20
    assert bytes.fromhex(meta["root_hash_hex"]) == head.root_hash
    assert bytes.fromhex(meta["signature_hex"]) == head.signature
    assert meta["timestamp_ms"] == head.timestamp_ms
    assert meta["dump_bytes"] == (tmp_path / "pvc" / path).stat().st_size > 0
    assert meta["spec"] == {"zones": ["a"]} and meta["path"] == path
    assert not list((tmp_path / "pvc" / "demo").glob("*.partial"))

    fresh = await _new_db(dsn, f"{urlsplit(dsn).path.lstrip('/')}_r")
    renv = _env(fresh, tmp_path, BECO_RESTORE_PATH=path, BECO_RESTORE_PVC="backups")
    out = _run(backup.RESTORE_SCRIPT, renv)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "termination-log").read_text().startswith("Restored: ")
    assert "a log of 20 leaves" in (tmp_path / "termination-log").read_text()

    store = await SstStore.open(fresh, key, clock=clock)  # checks every leaf and the head
    try:
        assert store.tree_head() == head
        verify_tree_head(public_key_bytes(key), store.tree_head())
        hist = await store.history("u1")
        assert [c.sequence for c in hist] == [1, 2, 3, 4, 5]
        await store.commit(make_entry("u1", 6))  # and it goes on from there
        new = store.tree_head()
        proof = store.consistency_proof(head.tree_size, new.tree_size)
        verify_consistency(head.tree_size, new.tree_size, head.root_hash, new.root_hash, proof)
    finally:
        await store.close()

    # over a non-empty log: refused with its reason, the log untouched
    out = _run(backup.RESTORE_SCRIPT, renv)
    assert out.returncode == 1
    msg = (tmp_path / "termination-log").read_text()
    assert msg.startswith("LogNotEmpty: the database already holds a log of 21 leaves"), msg
    store = await SstStore.open(fresh, key, clock=clock)
    try:
        assert store.tree_head() == new
    finally:
        await store.close()


async def test_restore_of_a_missing_backup_says_so(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "pvc").mkdir()
    env = _env(dsn, tmp_path, BECO_RESTORE_PATH=f"demo/{STAMP}.dump", BECO_RESTORE_PVC="b")
    out = _run(backup.RESTORE_SCRIPT, env)
    assert out.returncode == 1
    assert (tmp_path / "termination-log").read_text().startswith("BackupNotFound: no backup")
