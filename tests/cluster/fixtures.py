"""pytest plugin: the session-scoped ``control_plane`` fixture and a per-test namespace.

Enable with ``pytest_plugins = ["tests.cluster.fixtures"]`` (the root tests/conftest.py does).
The plane starts once per session, on first use. Without built binaries the fixture skips,
except under CI (env ``CI=true``) where a missing prerequisite must fail.

Knobs (environment): ``BECO_CONTROLPLANE_BIN`` (binaries), ``BECO_CP_ZONES`` (default ``a,b,c``),
``BECO_CP_NODES_PER_ZONE`` (default 2).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from .binaries import default_bin_dir, missing_binaries
from .plane import ControlPlane
from .rest import ApiError

#: Tests on the real cluster start kubelets and containerd as root and take minutes: they run
#: only when asked for (``make e2e-k8s`` sets BECO_REAL_CLUSTER=1).
real_cluster_only = pytest.mark.skipif(
    os.environ.get("BECO_REAL_CLUSTER") != "1",
    reason="real-cluster tests are opt-in: BECO_REAL_CLUSTER=1 (make e2e-k8s)",
)


def require_binaries() -> None:
    """Skip (or, under CI=true, fail) the calling test if the binaries are not built."""
    bin_dir = default_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        msg = f"control plane not built ({', '.join(missing)} missing in {bin_dir}); run `make controlplane`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running control plane shared by the whole session (nodes Ready in every zone)."""
    require_binaries()
    zones = tuple(z for z in os.environ.get("BECO_CP_ZONES", "a,b,c").split(",") if z)
    per_zone = int(os.environ.get("BECO_CP_NODES_PER_ZONE", "2"))
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane"), zones, per_zone)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def k8s_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace for one test, deleted (in the background) afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.api(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    # Pods can only be created once the ServiceAccount controller made the default account.
    control_plane.wait_for(
        lambda: control_plane.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=30,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    try:
        control_plane.api("DELETE", f"/api/v1/namespaces/{name}")
    except (ApiError, OSError):
        pass  # the plane may already be gone at session end
