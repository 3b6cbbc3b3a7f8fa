"""EmbeddedPostgres: a real PostgreSQL server owned by this process, for local runs and tests.

Layout under ``data_dir`` (kept across restarts)::

    pgdata/          the cluster (initdb on first start), owned by the service user
    postgres.log     the server's log (appended)
    port             the last TCP port, reused on the next start if still free
    run/             the Unix socket directory (skipped when the path is too long)

Why not ``pgserver``'s own API: it works as root here, but only by creating a system
account with ``useradd``, widening permissions up every ancestor directory and of its
install tree, listening on a Unix socket only (no TCP, so no ``host:port`` DSN for
other processes), finding old servers by command line and killing them, and stopping
from ``atexit`` with a reference count kept in a file. This class instead runs the
server binaries (system ones, else the ones in the pgserver wheel, see
``binaries.py``) directly as a child process:

- it listens on 127.0.0.1 only, ``trust`` authentication (local development and tests;
  production uses ``--database-url`` to a managed server);
- it runs in its own session so a terminal Ctrl-C reaches us, not the database: we
  stop it last, after the services using it;
- it gets SIGINT (fast shutdown) if its parent thread dies, so a crashed test run
  leaves no server behind (Linux ``PR_SET_PDEATHSIG``);
- ``stop()`` is a fast shutdown (SIGINT): open transactions are rolled back, every
  committed one is durable (fsync stays on);
- ``start()`` after a crash (postmaster killed with SIGKILL): the dead postmaster's
  ``postmaster.pid`` is removed only once its pid is no live PostgreSQL process, after
  the orphaned backends of this data directory have exited (they still hold the old
  shared memory, which makes a new postmaster refuse to start). Nothing else is deleted:
  PostgreSQL's crash recovery replays the WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import asyncpg

from beco_node.pg.binaries import (
    PgBinaries,
    PostgresError,
    ServiceUser,
    ensure_traversable,
    find_binaries,
    service_user,
)

DB_USER = "beco"
DB_NAME = "beco"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
ORPHAN_WAIT_S = 10.0
_POSTGRES_NAMES = ("postgres", "postmaster")
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN"
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as PostgreSQL binds: TIME_WAIT leftovers from our last run do not count
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the child: ask the kernel for SIGINT (fast shutdown) when our parent exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the server then outlives a crashed parent


class EmbeddedPostgres:
    """One PostgreSQL server over ``data_dir``; ``async with`` starts and stops it."""

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self._requested_port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.dsn = ""
        self._log_offset = 0

    # -- public API -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    async def start(self) -> str:
        """Initialise the cluster if needed, start the server and return its DSN."""
        if self.running:
            return self.dsn
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = service_user(self.pgdata)
        binaries = find_binaries(self._data_major())
        if user.uid is not None:
            ensure_traversable(self.pgdata)
            ensure_traversable(binaries.postgres)
        if not (self.pgdata / "PG_VERSION").exists():
            await asyncio.to_thread(self._initdb, binaries, user)
        await self._clear_stale_lock()
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            port = self._choose_port(fresh=attempt > 0)
            self._spawn(binaries, user, port)
            try:
                await self._wait_ready(port)
                break
            except _BindFailed:
                if attempt == attempts - 1:
                    raise PostgresError(f"port {port} is taken; see {self.log_path}") from None
        self.port = port
        try:
            (self.data_dir / "port").write_text(f"{port}\n")
            await self._ensure_database()
        except BaseException:
            await self.stop()
            raise
        self.dsn = f"postgresql://{DB_USER}@127.0.0.1:{port}/{DB_NAME}"
        return self.dsn

    async def stop(self) -> None:
        """Fast shutdown; returns once the server has exited. Data stays in ``data_dir``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in (
            (signal.SIGINT, STOP_TIMEOUT_S),
            (signal.SIGQUIT, 5.0),
            (signal.SIGKILL, 5.0),
        ):
            proc.send_signal(sig)
            if await self._wait_exit(proc, wait_s):
                return
        raise PostgresError(f"PostgreSQL (pid {proc.pid}) did not exit")

    async def __aenter__(self) -> EmbeddedPostgres:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- internals --------------------------------------------------------------------------

    def _data_major(self) -> int | None:
        version = self.pgdata / "PG_VERSION"
        if not version.exists():
            return None
        return int(version.read_text().strip().split(".")[0])

    async def _clear_stale_lock(self) -> None:
        """Remove the lock file of a dead postmaster (never a live one's, never data)."""
        lock = self.pgdata / "postmaster.pid"
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return  # no lock (clean stop), or one PostgreSQL itself will judge
        if pid in _postgres_in(self.pgdata):
            raise PostgresError(
                f"a PostgreSQL server is already running on {self.pgdata} "
                f"(pid {pid} in its postmaster.pid)"
            )
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while orphans := _postgres_in(self.pgdata):
            if time.monotonic() > deadline:
                for orphan in orphans:  # backends of a dead postmaster: no one else's
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(orphan, signal.SIGKILL)
                deadline = time.monotonic() + ORPHAN_WAIT_S
            await asyncio.sleep(0.1)
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        self._note(f"removed the stale postmaster.pid of pid {pid} (not a running PostgreSQL)")

    def _note(self, text: str) -> None:
        with contextlib.suppress(OSError), self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n".encode())

    def _prepare_dir(self, path: Path, user: ServiceUser) -> None:
        path.mkdir(mode=0o700, exist_ok=True)
        if user.uid is not None and user.gid is not None:
            os.chown(path, user.uid, user.gid)

    def _initdb(self, binaries: PgBinaries, user: ServiceUser) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise PostgresError(f"{self.pgdata} is not empty but holds no PostgreSQL cluster")
        self._prepare_dir(self.pgdata, user)
        cmd = [
            str(binaries.initdb),
            "-D",
            str(self.pgdata),
            "-U",
            DB_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # only the initial files; the running server fsyncs normally
        ]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=120,
            user=user.uid,
            group=user.gid,
            extra_groups=[] if user.uid is not None else None,
            cwd=self.data_dir,
        )
        if result.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise PostgresError(f"initdb failed: {result.stdout}\n{result.stderr}".strip())

    def _choose_port(self, *, fresh: bool) -> int:
        if self._requested_port is not None:
            return self._requested_port
        if not fresh:
            try:
                previous = int((self.data_dir / "port").read_text().strip())
            except (OSError, ValueError):
                previous = 0
            if previous and _port_is_free(previous):
                return previous
        return free_port()

    def _socket_dir(self, user: ServiceUser) -> str:
        run = self.data_dir / "run"
        if len(str(run)) > _SOCKET_PATH_MAX:
            return ""  # TCP only
        self._prepare_dir(run, user)
        return str(run)

    def _spawn(self, binaries: PgBinaries, user: ServiceUser, port: int) -> None:
        cmd = [
            str(binaries.postgres),
            "-D",
            str(self.pgdata),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self._socket_dir(user)}",
            "-c",
            "max_connections=200",
        ]
        with self.log_path.open("ab") as log:
            log.write(
                f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting on port {port}\n".encode()
            )
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                user=user.uid,
                group=user.gid,
                extra_groups=[] if user.uid is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read()[-4000:].decode(errors="replace")
        except OSError:
            return ""

    async def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        proc = self._proc
        assert proc is not None
        while True:
            if proc.poll() is not None:
                self._proc = None
                tail = self._log_tail()
                if "could not bind" in tail or "Address already in use" in tail:
                    raise _BindFailed
                raise PostgresError(f"PostgreSQL exited with code {proc.returncode}:\n{tail}")
            try:
                conn = await asyncpg.connect(
                    host="127.0.0.1", port=port, user=DB_USER, database="postgres", timeout=2
                )
            except (TimeoutError, OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    await self.stop()
                    raise PostgresError(
                        f"PostgreSQL did not accept connections within {START_TIMEOUT_S:.0f} s:\n"
                        f"{self._log_tail()}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            try:
                data_dir = await conn.fetchval("SELECT current_setting('data_directory')")
            finally:
                await conn.close()
            if data_dir == str(self.pgdata):  # as we passed it with -D
                return
            # Another server answers on this port; ours will fail to bind and exit.
            if time.monotonic() > deadline:
                await self.stop()
                raise PostgresError(f"port {port} is served by another PostgreSQL ({data_dir})")
            await asyncio.sleep(0.05)

    async def _ensure_database(self) -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=DB_USER, database="postgres", timeout=10
        )
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB_NAME)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            await conn.close()

    @staticmethod
    async def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True


def _proc_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None  # gone (or no /proc)


def _is_postgres(pid: int) -> bool:
    """Whether ``pid`` is a live PostgreSQL process (a recycled pid is not)."""
    if pid <= 0:
        return False
    name = _proc_name(pid)
    if name is None:
        return False
    try:  # a zombie is not alive
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and name in _POSTGRES_NAMES


def _postgres_in(pgdata: Path) -> list[int]:
    """Live PostgreSQL processes working in ``pgdata`` (the postmaster and its backends run
    with it as their working directory; a recycled pid or another cluster's server does not)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.readlink(entry / "cwd") != str(pgdata):
                continue
        except OSError:
            continue
        if _is_postgres(pid):
            out.append(pid)
    return out


class _BindFailed(Exception):
    """The chosen port was taken between choosing and binding."""
