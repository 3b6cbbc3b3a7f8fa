"""A harness process that is terminated or killed leaves no component behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import pid_alive, port_open
from tests.cluster.binaries import REPO_ROOT
from tests.cluster.fixtures import require_binaries

pytestmark = pytest.mark.controlplane

SCRIPT = """
import json, sys, time
from pathlib import Path
from tests.cluster import ControlPlane
cp = ControlPlane(Path(sys.argv[1]), zones=("a",), nodes_per_zone=1)
cp.start()
print(json.dumps({"pids": cp.pids(), "ports": list(cp.ports.values())}), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_harness_death_stops_components(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM runs the harness's handler; SIGKILL runs nothing, the kernel's pdeathsig acts."""
    require_binaries()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "plane")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        info = json.loads(line)
        pids: list[int] = info["pids"]
        ports: list[int] = info["ports"]
        assert len(pids) == 5 and all(pid_alive(p) for p in pids)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        any(pid_alive(p) for p in pids) or any(port_open(p) for p in ports)
    ):
        time.sleep(0.1)
    assert [p for p in pids if pid_alive(p)] == []
    assert [p for p in ports if port_open(p)] == []
