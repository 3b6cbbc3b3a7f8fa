"""Fixtures: one real PostgreSQL server per session, a fresh database per test.

The server is ``beco_node.pg.EmbeddedPostgres`` (real binaries, see docs/merkle-log.md);
if it cannot run, the tests error out rather than skip, locally and in CI alike.

Data directories live in our own ``/tmp/beco-pg-*`` directories, not under pytest's
``tmp_path``: as root the server runs as another user who must traverse the path, and
every pytest session that starts resets ``/tmp/pytest-of-root`` to mode 0700.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from beco_node.pg import EmbeddedPostgres
from beco_node.sst.records import CommitEntry
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_db_counter = itertools.count()


def _pg_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="beco-pg-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server() -> AsyncIterator[EmbeddedPostgres]:
    for base in _pg_base():
        server = EmbeddedPostgres(base / "session")
        await server.start()
        yield server
        await server.stop()


def _dsn_for(server: EmbeddedPostgres, name: str) -> str:
    return server.dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def dsn(pg_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """A DSN to a new, empty database on the session server."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _dsn_for(pg_server, name)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


class FakeClock:
    """An injectable clock: milliseconds that advance by 1 per reading."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        self.now += 1
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_entry(user: str, seq: int, *, kind: str | None = None, tag: str = "") -> CommitEntry:
    """A commit entry whose payloads name the user and sequence (so they can be checked)."""
    return CommitEntry(
        proposal_id=f"p-{user}-{seq}{tag}",
        user_id=user,
        sequence=seq,
        kind=kind or ("create_user" if seq == 1 else "set_first_name"),
        state=f"state {user} {seq}".encode(),
        leaf_data=f"leaf {user} {seq}{tag}".encode(),
        committed_ms=1_000 + seq,
    )


@pytest.fixture
def entry() -> Callable[..., CommitEntry]:
    return make_entry


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A data directory for a test's own server (removed afterwards)."""
    for base in _pg_base():
        yield base / "pg"
