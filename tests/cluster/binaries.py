"""Where the control-plane binaries are.

The same rule as ``tools/controlplane/bindir``: ``$BECO_CONTROLPLANE_BIN`` if set, otherwise
``$CACHE`` (or ``$BECO_CACHE``, default ``~/.cache/beco``) ``/controlplane/<key>/bin`` where the
key is made of the versions pinned in ``tools/controlplane/versions.env``. kwok's stage files are
installed next to ``bin/`` in ``kwok-stages/`` by the build script.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO_ROOT / "tools" / "controlplane" / "versions.env"

#: Binaries the plane needs to run (kubectl and helm are built too, for other areas' checks).
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class BinariesMissing(RuntimeError):
    """The control plane has not been built (run ``make controlplane``)."""


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """The ``NAME=value`` pins of versions.env (comments and blanks ignored)."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        versions[name.strip()] = value.strip()
    return versions


def cache_dir() -> Path:
    cache = os.environ.get("CACHE") or os.environ.get("BECO_CACHE") or "~/.cache/beco"
    return Path(cache).expanduser().absolute()


def default_bin_dir() -> Path:
    """The bin dir as tools/controlplane/bindir prints it."""
    env = os.environ.get("BECO_CONTROLPLANE_BIN")
    if env:
        return Path(env).expanduser().absolute()
    v = read_versions()
    key = f"{v['K8S_VERSION']}-{v['ETCD_VERSION']}-{v['KWOK_VERSION']}-{v['HELM_VERSION']}"
    return cache_dir() / "controlplane" / key / "bin"


def missing_binaries(bin_dir: Path, required: tuple[str, ...] = REQUIRED) -> list[str]:
    return [name for name in required if not os.access(bin_dir / name, os.X_OK)]


def check_bin_dir(bin_dir: Path, required: tuple[str, ...] = REQUIRED) -> Path:
    """Return bin_dir if it holds every required binary, else raise BinariesMissing."""
    missing = missing_binaries(bin_dir, required)
    if missing:
        raise BinariesMissing(
            f"control-plane binaries missing in {bin_dir}: {', '.join(missing)} "
            "(build them with `make controlplane`)"
        )
    return bin_dir


def stages_dir(bin_dir: Path) -> Path:
    """kwok's stage files, installed by the build script beside bin/."""
    return Path(os.environ.get("BECO_KWOK_STAGES") or bin_dir.parent / "kwok-stages")
