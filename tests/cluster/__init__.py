"""A real Kubernetes control plane for the tests (see docs/testing.md).

    from tests.cluster import ControlPlane
    cp = ControlPlane(workdir, zones=("a", "b", "c"), nodes_per_zone=2)
    cp.start()   # etcd, kube-apiserver, controller-manager, scheduler, kwok; nodes Ready
    cp.kubeconfig, cp.api_url, cp.bin_dir, cp.env(), cp.api("GET", "/api/v1/nodes")
    cp.stop()

pytest: ``pytest_plugins = ["tests.cluster.fixtures"]`` gives the session fixture
``control_plane``. Command line: ``python -m tests.cluster up|down|env``.
"""

from .binaries import BinariesMissing, default_bin_dir, missing_binaries
from .plane import (
    KWOK_ANNOTATION,
    STORAGE_CLASS,
    ZONE_LABEL,
    ControlPlane,
    ControlPlaneError,
    free_ports,
    port_open,
)
from .process import pid_alive
from .rest import ApiError, RestClient

__all__ = [
    "KWOK_ANNOTATION",
    "STORAGE_CLASS",
    "ZONE_LABEL",
    "ApiError",
    "BinariesMissing",
    "ControlPlane",
    "ControlPlaneError",
    "RestClient",
    "default_bin_dir",
    "free_ports",
    "missing_binaries",
    "pid_alive",
    "port_open",
]
