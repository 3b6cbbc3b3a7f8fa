from __future__ import annotations

from pathlib import Path

from beco_operator import kube


def test_in_cluster_credentials_need_no_dns(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert kube.in_cluster(env, tmp_path) is None  # no token mounted: not in a pod
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "namespace").write_text("beco-system")
    info = kube.in_cluster(env, tmp_path)
    assert info is not None
    assert (info.server, info.token, info.default_namespace, info.ca_path) == (
        "https://10.96.0.1:443",
        "tok",
        "beco-system",
        None,
    )
    (tmp_path / "ca.crt").write_text("x")
    v6 = kube.in_cluster({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, tmp_path)
    assert v6 is not None and v6.server == "https://[fd00::1]:443"
    assert v6.ca_path == str(tmp_path / "ca.crt")
    assert kube.in_cluster({}, tmp_path) is None
