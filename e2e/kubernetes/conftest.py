"""The Kubernetes e2e suite's target cluster.

Opt-in (``BECO_REAL_CLUSTER=1``; ``make e2e-k8s`` sets it). With ``BECO_E2E_KUBECONFIG`` the
suite runs against that cluster (any: kind, a cloud cluster) and expects ``BECO_E2E_IMAGE`` to
be pullable or loaded there; without it, it brings up the real cluster of tests/cluster/real.py
here (in ``BECO_E2E_WORKDIR`` or a temporary dir), loads ``BECO_E2E_IMAGE`` (default
``localhost/beco:dev``, from ``make image``) into every node, and tears it down at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
    # Imports more local images into the cluster's nodes (None: the cluster cannot, e.g. a
    # given kubeconfig; load them there yourself).
    load_images: Callable[[Sequence[str]], None] | None = None

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

    @property
    def kubectl_bin(self) -> str:
        """The harness's kubectl, else the one on PATH (a kind machine)."""
        own = self.bin_dir / "kubectl"
        return str(own if own.exists() else shutil.which("kubectl") or "kubectl")

    def kubectl(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        return self.run(self.kubectl_bin, *args, timeout=timeout, check=check)

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
        yield Target(rc.kubeconfig, image, rc.bin_dir, rc.load_images)
    finally:
        rc.stop()


FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")


@contextmanager
def port_forward(
    k8s: Target, target: str, port: int, timeout: float = 60, namespace: str | None = None
) -> Iterator[int]:
    """``kubectl port-forward [-n NAMESPACE] <target> :port`` on 127.0.0.1; yields the local
    port (``namespace`` None: the kubeconfig's)."""
    ns = ["-n", namespace] if namespace else []
    cmd = [k8s.kubectl_bin, "port-forward", *ns, "--address", "127.0.0.1", target]
    proc = subprocess.Popen(
        [*cmd, f":{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=k8s.env(),
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:  # kubectl prints the line once the forward listens
            line = proc.stdout.readline()
            m = FORWARDING.search(line)
            if m:
                break
            if not line or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
                raise AssertionError(f"port-forward to {target} did not start: {err}")
        yield int(m[1])
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


RELEASE = "beco"
OPERATOR_NS = "beco-system"
NETWORK = "demo"  # examples/network.yaml, in the default namespace
FIGURES: dict[str, float] = {}  # what the journey measured, printed at the end (pytest -s)


def _image_values(image: str) -> list[str]:
    repo, _, tag = image.rpartition(":")
    return ["--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=IfNotPresent"]  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "journey_end: changes or deletes the shared network: runs after the rest"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``journey_end`` change or delete the shared network: they run after every
    other test, in their own order."""
    items.sort(key=lambda it: it.get_closest_marker("journey_end") is not None)


QUICK_START_IMAGE = "localhost/beco:dev"  # the README quick start's helm line installs it


@pytest.fixture(scope="session")
def operator(k8s: Target) -> Target:
    """The chart installed with our image by the README quick start's own helm line: the
    operator runs as a pod. Another image (a second checkout's tag, kind's) is set by
    appending ``--set image...`` (later flags win)."""
    from .docs_commands import doc_commands, run_doc

    line = next(c for c in doc_commands() if c.startswith(f"helm install {RELEASE} charts/"))
    extra = "" if k8s.image == QUICK_START_IMAGE else " ".join(_image_values(k8s.image))
    run_doc(k8s, line, timeout=400, image_overrides=extra)
    return k8s


@pytest.fixture(scope="session")
def demo(operator: Target) -> Iterator[Target]:
    """``examples/network.yaml`` applied as written and Ready (the time it took is a figure)."""
    from .docs_commands import run_doc

    start = time.monotonic()
    run_doc(operator, "kubectl apply -f examples/network.yaml")
    try:
        run_doc(
            operator, f"kubectl wait --for=condition=Ready beconetwork/{NETWORK} --timeout=180s"
        )
    except AssertionError as exc:  # say why: the pods and the network's own conditions
        pods = operator.kubectl("get", "pods", "-o", "wide", check=False)
        conds = operator.kubectl(
            "get", f"beconetwork/{NETWORK}", "-o", "jsonpath={.status.conditions}", check=False
        )
        raise AssertionError(f"{exc}\n{pods}\n{conds}") from None
    FIGURES["apply -> Ready (s)"] = time.monotonic() - start
    yield operator
    if FIGURES:
        print("\njourney figures: " + ", ".join(f"{k}: {v:.2f}" for k, v in FIGURES.items()))
        out = Path(os.environ.get("BECO_E2E_FIGURES", REPO / ".state" / "e2e-figures.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(FIGURES, indent=2) + "\n")
        print(f"journey figures written to {out}")
