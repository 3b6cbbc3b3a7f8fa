"""Start and stop the plane twice in one run (library, then CLI): nothing may be left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import ControlPlane, pid_alive, port_open
from tests.cluster.binaries import REPO_ROOT
from tests.cluster.fixtures import require_binaries

pytestmark = pytest.mark.controlplane


def _processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line contains ``text`` (our workdir is in every component's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def _assert_all_gone(pids: list[int], ports: list[int], workdir: Path) -> None:
    assert [p for p in pids if pid_alive(p)] == []
    assert [p for p in ports if port_open(p)] == []
    assert _processes_mentioning(str(workdir)) == []


def test_start_stop_twice_leaves_nothing(tmp_path: Path) -> None:
    require_binaries()

    # Round 1: the library API, as fixtures use it.
    wd1 = tmp_path / "one"
    cp = ControlPlane(wd1, zones=("a", "b"), nodes_per_zone=1)
    cp.start()
    try:
        pids, ports = cp.pids(), list(cp.ports.values())
        assert len(pids) == 5
        assert all(port_open(p) for p in ports)
        nodes = cp.api("GET", "/api/v1/nodes")["items"]
        assert sorted(n["metadata"]["name"] for n in nodes) == ["kwok-a-0", "kwok-b-0"]
    finally:
        cp.stop()
    _assert_all_gone(pids, ports, wd1)
    cp.stop()  # idempotent

    # Round 2: the command line, detached between `up` and `down`.
    wd2 = tmp_path / "two"
    cli = [sys.executable, "-m", "tests.cluster"]
    common = ["--workdir", str(wd2)]
    up = subprocess.run(
        [*cli, "up", *common, "--zones", "x", "--nodes-per-zone", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    state_file = wd2 / "state.json"
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads(state_file.read_text())
        pids, ports = state["pids"], list(state["ports"].values())
        assert all(pid_alive(p) for p in pids)  # the plane outlived the `up` process
        assert all(port_open(p) for p in ports)
        env = subprocess.run(
            [*cli, "env", *common], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        assert f"export KUBECONFIG={wd2 / 'kubeconfig'}" in env.stdout
    finally:
        down = subprocess.run(
            [*cli, "down", *common], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )
    assert down.returncode == 0, down.stderr
    assert not state_file.exists()
    _assert_all_gone(pids, ports, wd2)
