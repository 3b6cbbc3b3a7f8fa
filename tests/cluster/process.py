"""Supervised child processes that never outlive the harness.

Each component runs in its own session (so it and anything it spawns form one process group
that can be signalled at once), with stdout/stderr in a log file. Three layers make sure nothing
is left behind:

* ``Process.stop`` sends SIGTERM to the group, then SIGKILL after a grace period;
* every live process is registered, and an ``atexit`` hook plus a SIGTERM/SIGHUP handler (turned
  into ``KeyboardInterrupt`` so pytest still runs its finalizers) stop them all;
* when started from the main thread, ``setpriv --pdeathsig KILL`` makes the kernel kill the child
  if the harness itself dies without running any Python code (e.g. SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

_live: dict[int, Process] = {}
_lock = threading.Lock()
_handlers_installed = False


class Process:
    """One long-running component (etcd, kube-apiserver, ...)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        die_with_parent: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.die_with_parent = die_with_parent
        self.env = env
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._popen.pid

    def start(self) -> None:
        _install_handlers()
        argv = self.argv
        setpriv = shutil.which("setpriv")
        in_main = threading.current_thread() is threading.main_thread()
        if self.die_with_parent and setpriv and in_main:
            # The death signal fires when the forking *thread* exits: main thread only.
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        with open(self.log, "ab") as out:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        with _lock:
            _live[self._popen.pid] = self

    def poll(self) -> int | None:
        """The exit code, or None while running."""
        return None if self._popen is None else self._popen.poll()

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the whole process group; SIGKILL what is left after ``grace`` seconds."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            kill_group(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                kill_group(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)
        # Reap stragglers the component may have forked into its group.
        kill_group(popen.pid, signal.SIGKILL)
        with _lock:
            _live.pop(popen.pid, None)


def kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and still holds resources.

    A zombie whose threads have all exited holds nothing (no fds, no ports); but a killed
    multi-threaded process shows its leader as a zombie while other threads still tear down
    and its sockets stay open, so that counts as alive.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    zombie = fields.get("State", "").strip().startswith("Z")
    threads = int(fields.get("Threads", "1").strip() or "1")
    return not zombie or threads > 1


def stop_pids(pids: Sequence[int], grace: float = 5.0) -> None:
    """Stop process groups by id, one after the other in the given order (for ``down`` from
    another process than the one that started them: no Popen objects to wait on)."""
    for pid in pids:
        kill_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)
        kill_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)


def forget(pids: Sequence[int]) -> None:
    """Stop supervising ``pids`` (a detached plane must outlive this interpreter)."""
    with _lock:
        for pid in pids:
            _live.pop(pid, None)


def stop_all() -> None:
    """Stop every process this harness started and has not stopped yet (newest first)."""
    with _lock:
        procs = list(_live.values())
    for proc in reversed(procs):
        proc.stop(grace=2.0)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all()
    raise KeyboardInterrupt(f"signal {signum}")


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_signal)
