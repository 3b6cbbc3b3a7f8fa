"""The Kubernetes e2e suite's target cluster.

Opt-in (``BECO_REAL_CLUSTER=1``; ``make e2e-k8s`` sets it). With ``BECO_E2E_KUBECONFIG`` the
suite runs against that cluster (any: kind, a cloud cluster) and expects ``BECO_E2E_IMAGE`` to
be pullable or loaded there; without it, it brings up the real cluster of tests/cluster/real.py
here (in ``BECO_E2E_WORKDIR`` or a temporary dir), loads ``BECO_E2E_IMAGE`` (default
``localhost/beco:dev``, from ``make image``) into every node, and tears it down at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.binaries import default_bin_dir
from tests.cluster.real import RealCluster, cluster_bin_dir

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Target:
    """A cluster to run the journey on: kubectl and helm pointed at it."""

    kubeconfig: Path
    image: str
    bin_dir: Path

    def env(self) -> dict[str, str]:
        path = f"{self.bin_dir}{os.pathsep}{cluster_bin_dir()}{os.pathsep}{os.environ['PATH']}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def run(self, *argv: str, timeout: float = 300, check: bool = True) -> str:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, env=self.env(), cwd=REPO, timeout=timeout
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {res.returncode}:\n{res.stderr}{res.stdout}"
            )
        return res.stdout

    def kubectl(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        return self.run(str(self.bin_dir / "kubectl"), *args, timeout=timeout, check=check)

    def helm(self, *args: str, timeout: float = 300) -> str:
        helm = self.bin_dir / "helm"
        return self.run(
            str(helm if helm.exists() else shutil.which("helm") or "helm"), *args, timeout=timeout
        )


@pytest.fixture(scope="session")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    image = os.environ.get("BECO_E2E_IMAGE", "localhost/beco:dev")
    given = os.environ.get("BECO_E2E_KUBECONFIG")
    if given:
        yield Target(Path(given), image, default_bin_dir())
        return
    workdir = os.environ.get("BECO_E2E_WORKDIR")
    rc = RealCluster(
        Path(workdir) if workdir else tmp_path_factory.mktemp("e2e-k8s"), extra_images=[image]
    )
    try:
        rc.start()
        yield Target(rc.kubeconfig, image, rc.bin_dir)
    finally:
        rc.stop()
