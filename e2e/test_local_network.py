"""The user's main job, end to end: ``beco-local up`` in one terminal, the banner's
copy-paste CLI example in another, ``beco-local down``, and a restart that keeps
every committed change.

Runs the real entry points as separate processes (the same ones ``make run``
starts), on a free port range and a temporary state directory, and executes the
banner's example lines verbatim with bash, so the printed instructions are tested.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from beco_node.local.network import free_base_port

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


class Up:
    """A running ``beco-local up`` and the lines it printed."""

    def __init__(self, state: Path, base_port: int) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [
                str(BIN / "beco-local"),
                "up",
                "--state-dir",
                str(state),
                "--base-port",
                str(base_port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
            start_new_session=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("beco-local up exited early:\n" + "".join(self.lines))
            self.lines.append(line)
            if "stops the network" in line:
                return
        raise AssertionError("no banner within 120 s:\n" + "".join(self.lines))

    def example(self) -> list[str]:
        start = next(i for i, ln in enumerate(self.lines) if ln.startswith("Try it"))
        return [ln.strip() for ln in self.lines[start + 1 :] if ln.startswith("  ")]

    def down(self) -> None:
        # `down` waits for the `up` process to vanish; as its parent we must reap it
        # meanwhile, or it lingers as a zombie that `down` still sees.
        down = subprocess.Popen(
            [str(BIN / "beco-local"), "down", "--state-dir", str(self.state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert self.proc.wait(timeout=90) == 0
        _, err = down.communicate(timeout=30)
        assert down.returncode == 0, err
        assert self.proc.stdout is not None
        assert "stopped" in self.proc.stdout.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Outside pytest's basetemp: PostgreSQL runs as another user and must traverse the path.
    d = Path(tempfile.mkdtemp(prefix="beco-e2e-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=120
    )


def test_banner_example_then_restart_keeps_changes(workdir: Path) -> None:
    state = workdir / "state"
    up = Up(state, free_base_port())
    try:
        lines = up.example()
        assert any("user create" in ln for ln in lines), lines
        # Run the copy-paste example line by line, as a person would, in one shell session
        # so that $ALICE and $BOB carry over; the line marked "refused" must fail with
        # PERMISSION_DENIED (exit 17), every other line must succeed.
        script = ["set -u"]
        for ln in lines:
            cmd = ln.split("#", 1)[0].strip()
            expect = 17 if "refused" in ln else 0
            script.append(
                f'{cmd}; rc=$?; if [ $rc -ne {expect} ]; then echo "FAILED({{rc=$rc}}): {cmd}" >&2; exit 1; fi'
            )
        script.append("echo $ALICE > alice.id")
        ran = bash("\n".join(script), workdir)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        up.down()
    finally:
        up.kill()

    # A second `up` on the same state directory keeps every committed change.
    again = Up(state, free_base_port())
    try:
        alice = (workdir / "alice.id").read_text().strip()
        b = next(ln for ln in again.example() if "user create" in ln).split(" --key")[0]
        got = bash(f"{b} --output json --key alice.key user get {alice}", workdir)
        assert got.returncode == 0, got.stderr
        doc = json.loads(got.stdout)
        assert "Alicia" in json.dumps(doc), doc
        hist = bash(f"{b} --output json --key alice.key user history", workdir)
        assert hist.returncode == 0, hist.stderr
        assert len(json.loads(hist.stdout)["entries"]) >= 3, hist.stdout
        again.down()
    finally:
        again.kill()
