"""Network namespaces the real cluster creates, and running Python code inside one.

``setns(2)`` with ``CLONE_NEWNET`` moves only the calling thread, so ``call_in`` runs a function
in a fresh thread that enters the namespace first: sockets it opens live there, the rest of the
process stays in the host's namespace.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)


def path(name: str) -> Path:
    return NETNS_DIR / name


def enter(name_or_path: str | Path) -> None:
    """Move the calling thread into a network namespace (a name under /run/netns or a path)."""
    target = Path(name_or_path)
    if not target.is_absolute():
        target = path(str(name_or_path))
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({target}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a thread inside namespace ``name``; return its result or raise its error."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            enter(name)
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def exists(name: str) -> bool:
    return path(name).exists()


def add(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)


def delete(name: str) -> None:
    if exists(name):
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def ip(name: str, *args: str) -> None:
    """``ip -n NAME ARGS``: configure links, addresses and routes inside a namespace."""
    res = subprocess.run(["ip", "-n", name, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ip -n {name} {' '.join(args)}: {res.stderr.strip()}")


def sysctl(name: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl inside ``name`` (writes /proc/sys from a thread inside it)."""

    def write() -> None:
        Path("/proc/sys", key.replace(".", "/")).write_text(value)

    call_in(name, write)


def prefix(name: str) -> list[str]:
    """argv prefix running a command in the namespace (only the network; mounts are shared)."""
    return ["nsenter", f"--net={path(name)}", "--"]
