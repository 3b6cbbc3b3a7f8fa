"""Fixtures of the shipping checks: tools found on this machine, a local network, Prometheus.

A missing tool skips the test locally and fails it in CI (env CI=true), as the team requires.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "beco-operator"


def need(what: str, why: str) -> None:
    msg = f"missing prerequisite {what}: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def tool(name: str, hint: str) -> str:
    """Path of a binary: from the control-plane cache (helm), else PATH."""
    cp_bin = os.environ.get("BECO_CONTROLPLANE_BIN", "")
    if cp_bin and (Path(cp_bin) / name).exists():
        return str(Path(cp_bin) / name)
    found = shutil.which(name)
    if not found:
        need(name, hint)
    return str(found)


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm", "built by `make controlplane` (tools/controlplane/bindir)")


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool", "Debian package prometheus (.ci/packages.d/ship.txt)")


@pytest.fixture(scope="session")
def prom_crds() -> Path:
    """The Prometheus Operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule)."""
    d = os.environ.get("BECO_PROM_CRDS", "")
    if not d or not Path(d).is_dir():
        need("prometheus-operator CRDs", "run `make prom-crds` (sets BECO_PROM_CRDS)")
    return Path(d)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "image: needs the container image (make image)")
