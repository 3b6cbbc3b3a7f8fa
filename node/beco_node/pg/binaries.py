"""Finding PostgreSQL server binaries and the unprivileged account to run them as.

Search order for the directory holding ``postgres`` and ``initdb``:

1. ``$BECO_PG_BINDIR`` if set (must hold them, else an error);
2. the system's ``/usr/lib/postgresql/<major>/bin``, highest major first (Debian's
   ``postgresql-15`` package; CI installs it, see ``.ci/packages.d/postgres.txt``);
3. the binaries bundled in the ``pgserver`` wheel (PostgreSQL 16, pinned in the lock),
   located without importing ``pgserver`` (its import has side effects).

A data directory is tied to one major version, so when one exists the binaries of
its ``PG_VERSION`` are preferred, and a mismatch is reported instead of corrupting it.

PostgreSQL refuses to run as root. When we are root the server runs as the owner of
an existing data directory, else as ``postgres`` if that account exists, else as
``nobody``; it needs search (x) permission on every ancestor of the data directory,
which ``ensure_traversable`` adds (only that bit, for "others").
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

SYSTEM_ROOT = Path("/usr/lib/postgresql")


class PostgresError(RuntimeError):
    """PostgreSQL could not be found, initialised, started or stopped; the message says why."""


@dataclass(frozen=True)
class PgBinaries:
    """A directory with the PostgreSQL server binaries and their major version."""

    bin_dir: Path
    major: int

    @property
    def postgres(self) -> Path:
        return self.bin_dir / "postgres"

    @property
    def initdb(self) -> Path:
        return self.bin_dir / "initdb"


@dataclass(frozen=True)
class ServiceUser:
    """The account the server runs as (``None`` fields: the current user, no switch)."""

    name: str | None
    uid: int | None
    gid: int | None


def _major_of(bin_dir: Path) -> int | None:
    postgres = bin_dir / "postgres"
    if not (postgres.is_file() and (bin_dir / "initdb").is_file()):
        return None
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


def _candidate_dirs() -> list[Path]:
    dirs: list[tuple[int, Path]] = []
    if SYSTEM_ROOT.is_dir():
        for child in SYSTEM_ROOT.iterdir():
            if child.name.isdigit() and (child / "bin").is_dir():
                dirs.append((int(child.name), child / "bin"))
    found = [d for _, d in sorted(dirs, reverse=True)]
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            found.append(Path(location) / "pginstall" / "bin")
    return found


def find_binaries(data_major: int | None = None) -> PgBinaries:
    """The binaries to use; ``data_major`` is the PG_VERSION of an existing data directory."""
    override = os.environ.get("BECO_PG_BINDIR")
    candidates = [Path(override)] if override else _candidate_dirs()
    usable: list[PgBinaries] = []
    for bin_dir in candidates:
        major = _major_of(bin_dir)
        if major is not None:
            usable.append(PgBinaries(bin_dir, major))
    if not usable:
        where = override or f"{SYSTEM_ROOT}/*/bin or the pgserver package"
        raise PostgresError(f"no PostgreSQL server binaries (postgres, initdb) found in {where}")
    if data_major is None:
        return usable[0]
    for b in usable:
        if b.major == data_major:
            return b
    have = ", ".join(f"{b.major} ({b.bin_dir})" for b in usable)
    raise PostgresError(
        f"the data directory was made by PostgreSQL {data_major}, but only {have} is available"
    )


def service_user(pgdata: Path) -> ServiceUser:
    """Who runs the server: ourselves, unless we are root (see module docstring)."""
    if os.geteuid() != 0:
        return ServiceUser(None, None, None)
    if pgdata.exists():
        st = pgdata.stat()
        if st.st_uid != 0:
            return ServiceUser(pwd.getpwuid(st.st_uid).pw_name, st.st_uid, st.st_gid)
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ServiceUser(name, entry.pw_uid, entry.pw_gid)
    raise PostgresError("running as root and neither a 'postgres' nor a 'nobody' account exists")


def ensure_traversable(path: Path) -> None:
    """Give "others" search permission on every ancestor of ``path`` that lacks it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
