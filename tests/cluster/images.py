"""The real cluster's container images, all built on this machine (nothing is ever pulled).

* ``localhost/pause:beco`` - ``images/pause.c`` compiled static, the sandbox image;
* ``localhost/coredns:<v>`` and ``localhost/local-path-provisioner:<v>`` - the binaries from
  ``tools/cluster`` in otherwise empty images;
* ``localhost/postgres:15-beco`` - ``images/postgres`` on the local Debian base (``make
  base-image``), tagged ``docker.io/library/postgres:15`` too inside each node (the operator's
  default ``postgres:15``);
* the local Debian base itself (the provisioner's helper pods run ``sh`` from it);
* optional extra images, e.g. ``localhost/beco:dev`` from ``make image``.

Each built image carries a ``beco.key`` label: a hash of everything it is made from. A build
is skipped when podman already holds the image with that key, an OCI archive is written once per
image ID into ``$CACHE/cluster-images/``, and a node imports an archive only if its containerd
does not hold that image ID yet, so warm runs only check.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .binaries import cache_dir

HERE = Path(__file__).parent / "images"
BASE_IMAGE = "localhost/debian-base:bookworm"
PAUSE_IMAGE = "localhost/pause:beco"
POSTGRES_IMAGE = "localhost/postgres:15-beco"
#: Names the same image also gets inside each node (what manifests ask for by default).
ALIASES = {POSTGRES_IMAGE: ("docker.io/library/postgres:15",)}
PODMAN_LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")


class ImageError(RuntimeError):
    """An image could not be built or imported."""


@dataclass(frozen=True)
class Archive:
    ref: str
    image_id: str
    path: Path


def _run(argv: Sequence[str], **kw: object) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise ImageError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return str(res.stdout)


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def image_id(ref: str) -> str | None:
    res = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True
    )
    return res.stdout.strip() or None if res.returncode == 0 else None


def _key_of(ref: str) -> str | None:
    res = subprocess.run(
        ["podman", "image", "inspect", "--format", '{{index .Labels "beco.key"}}', ref],
        capture_output=True,
        text=True,
    )
    return res.stdout.strip() if res.returncode == 0 else None


def _import_files(ref: str, key: str, files: dict[str, Path], entrypoint: list[str]) -> None:
    """An image holding only ``files`` (path in image -> file here), built with podman import."""
    with tempfile.TemporaryDirectory(prefix="beco-img-") as tmp:
        root = Path(tmp, "root")
        for dest, src in files.items():
            target = root / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read_bytes())
            target.chmod(0o755)
        tar = Path(tmp, "rootfs.tar")
        _run(["tar", "-C", str(root), "--owner=0", "--group=0", "-cf", str(tar), "."])
        _run(
            [
                "podman",
                "import",
                "--change",
                f"ENTRYPOINT {json.dumps(entrypoint)}",
                "--change",
                "ENV PATH=/usr/local/bin:/usr/bin:/bin",
                "--change",
                f"LABEL beco.key={key}",
                str(tar),
                ref,
            ]
        )


def build_pause() -> str:
    src = HERE / "pause.c"
    key = _sha(src.read_bytes())
    if _key_of(PAUSE_IMAGE) != key:
        with tempfile.TemporaryDirectory(prefix="beco-pause-") as tmp:
            out = Path(tmp, "pause")
            _run(["gcc", "-static", "-O2", "-s", "-o", str(out), str(src)])
            _import_files(PAUSE_IMAGE, key, {"/pause": out}, ["/pause"])
    return PAUSE_IMAGE


def build_binary_image(name: str, version: str, binary: Path, entrypoint: list[str]) -> str:
    ref = f"localhost/{name}:{version}"
    key = _sha(binary.read_bytes())
    if _key_of(ref) != key:
        _import_files(ref, key, {f"/usr/bin/{binary.name}": binary}, entrypoint)
    return ref


def build_postgres() -> str:
    base = image_id(BASE_IMAGE)
    if base is None:
        raise ImageError(f"{BASE_IMAGE} missing: run `make base-image`")
    ctx = HERE / "postgres"
    key = _sha(
        (ctx / "Dockerfile").read_bytes(),
        (ctx / "docker-entrypoint.sh").read_bytes(),
        base.encode(),
    )
    if _key_of(POSTGRES_IMAGE) != key:
        # apt-get needs the network; host networking keeps podman from creating cni-podman0.
        _run(
            [
                "buildah",
                "bud",
                "--runtime",
                "runc",
                *PODMAN_LIMITS,
                "--network",
                "host",
                "--build-arg",
                f"BASE_IMAGE={BASE_IMAGE}",
                "--label",
                f"beco.key={key}",
                "-t",
                POSTGRES_IMAGE,
                str(ctx),
            ]
        )
    return POSTGRES_IMAGE


def archive(ref: str) -> Archive:
    """An OCI archive of ``ref`` in the cache, written once per image ID."""
    iid = image_id(ref)
    if iid is None:
        raise ImageError(f"image {ref} not found in podman (build it first)")
    directory = cache_dir() / "cluster-images"
    directory.mkdir(parents=True, exist_ok=True)
    safe = ref.replace("/", "_").replace(":", "_")
    path = directory / f"{safe}-{iid[:16]}.tar"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        _run(["podman", "save", "--format", "oci-archive", "-o", str(tmp), ref])
        tmp.rename(path)
    return Archive(ref, iid, path)


def import_into(ctr: Path | str, socket: Path, archives: Sequence[Archive], marker: Path) -> int:
    """Import into one node's containerd what it lacks (``marker`` remembers image IDs there).
    Returns how many archives were imported."""
    known: dict[str, str] = json.loads(marker.read_text()) if marker.exists() else {}
    base = [str(ctr), "--address", str(socket), "-n", "k8s.io"]
    listed = _run([*base, "images", "ls", "-q"]).split()
    count = 0
    for a in archives:
        if known.get(a.ref) == a.image_id and a.ref in listed:
            continue
        _run([*base, "images", "import", str(a.path)])
        for alias in ALIASES.get(a.ref, ()):
            _run([*base, "images", "tag", "--force", a.ref, alias])
        known[a.ref] = a.image_id
        count += 1
    marker.write_text(json.dumps(known, indent=2))
    return count


def tag_in(ctr: Path | str, socket: Path, src: str, ref: str, marker: Path, iid: str) -> None:
    """Name an image one node's containerd already holds ``ref`` too (no archive needed)."""
    _run([str(ctr), "--address", str(socket), "-n", "k8s.io", "images", "tag", "--force", src, ref])
    known: dict[str, str] = json.loads(marker.read_text()) if marker.exists() else {}
    known[ref] = iid
    marker.write_text(json.dumps(known, indent=2))
