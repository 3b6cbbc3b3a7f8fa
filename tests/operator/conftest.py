"""Fixtures of the operator's integration tests (real control plane, operator as a process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.plane import ControlPlane

from .harness import OperatorProcess, install_crd, install_rbac


@pytest.fixture(scope="session")
def beco_crd(control_plane: ControlPlane) -> ControlPlane:
    """The control plane with the BecoNetwork CRD installed (schema tests need no operator)."""
    install_crd(control_plane)
    return control_plane


@pytest.fixture(scope="session")
def operator_kubeconfig(beco_crd: ControlPlane) -> Path:
    return install_rbac(beco_crd)


@pytest.fixture(scope="module")
def beco_operator(
    operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(
        operator_kubeconfig,
        log,
        "--resync-seconds=30",
        "--membership-wait=3",
        "--no-pod-metrics",
        "--rollout-settle-seconds=2",  # kwok pods are Ready at once and no DNS caches them
    )
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(f"--- operator log tail ({log}) ---\n{op.log_tail(40)}")
