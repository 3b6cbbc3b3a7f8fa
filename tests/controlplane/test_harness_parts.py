"""The harness's pure parts (no control plane needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.cluster import free_ports, port_open
from tests.cluster.binaries import REPO_ROOT, default_bin_dir, read_versions
from tests.cluster.kubeconfig import write_kubeconfig
from tests.cluster.pki import CertificateAuthority


@pytest.mark.parametrize(
    "env",
    [
        {"CACHE": "/x/cache"},
        {"BECO_CACHE": "/y/cache"},
        {"BECO_CONTROLPLANE_BIN": "/z/bin"},
    ],
)
def test_python_and_shell_agree_on_bin_dir(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name in ("CACHE", "BECO_CACHE", "BECO_CONTROLPLANE_BIN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    shell = subprocess.run(
        [str(REPO_ROOT / "tools/controlplane/bindir")], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(shell) == default_bin_dir()


def test_versions_match_tool_modules() -> None:
    v = read_versions()
    tools = REPO_ROOT / "tools" / "controlplane"
    pins = {
        "k8s": f"k8s.io/kubernetes {v['K8S_VERSION']}",
        "etcd": f"go.etcd.io/etcd/server/v3 {v['ETCD_VERSION']}",
        "kwok": f"sigs.k8s.io/kwok {v['KWOK_VERSION']}",
        "helm": f"helm.sh/helm/v3 {v['HELM_VERSION']}",
    }
    for module, pin in pins.items():
        assert pin in (tools / module / "go.mod").read_text(), module
    k8s_mod = (tools / "k8s" / "go.mod").read_text()
    staging = v["K8S_VERSION"].replace("v1.", "v0.", 1)
    assert f"k8s.io/client-go => k8s.io/client-go {staging}" in k8s_mod
    assert f"go.etcd.io/etcd/client/v3 {v['ETCD_VERSION']}" in k8s_mod


def test_certificates_chain_to_the_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    pair = ca.issue("admin", "beco-admin", ("system:masters",))
    ca_cert = x509.load_pem_x509_certificate(ca.pair.cert_pem())
    cert = x509.load_pem_x509_certificate(pair.cert_pem())
    cert.verify_directly_issued_by(ca_cert)
    assert (
        cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    )
    assert pair.key.stat().st_mode & 0o077 == 0


def test_kubeconfig_embeds_credentials(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", b"CA", user="u", token="t")
    config = yaml.safe_load(path.read_text())
    assert config["users"][0]["user"] == {"token": "t"}
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1"
    with pytest.raises(ValueError):
        write_kubeconfig(tmp_path / "bad", "https://127.0.0.1:1", b"CA", user="u")


def test_free_ports_are_distinct_and_closed() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert not any(port_open(p) for p in ports)


def test_a_killed_runs_cluster_is_torn_down_but_a_running_one_refuses(tmp_path: Path) -> None:
    """CI on a machine where an earlier run was killed mid-e2e must not fail on its leftovers;
    a cluster that still runs must never be taken over."""
    from tests.cluster.real import ClusterError, _claim_owner

    owner_file, old, new = tmp_path / "owner", tmp_path / "old", tmp_path / "new"
    old.mkdir()
    # A process standing in for the old cluster's kubelet: its argv names the old workdir.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(old / "n")])
    (old / "state.json").write_text(f'{{"pids": [{proc.pid}]}}')
    owner_file.write_text(str(old))
    stopped: list[Path] = []
    try:
        with pytest.raises(ClusterError, match="already up in"):
            _claim_owner(new, owner_file, stopped.append)  # type: ignore[arg-type]
        assert owner_file.read_text() == str(old) and not stopped
    finally:
        proc.kill()
        proc.wait()

    def stop(workdir: Path) -> bool:  # what real-down does to the state
        (workdir / "state.json").unlink()
        stopped.append(workdir)
        return True

    _claim_owner(new, owner_file, stop)
    assert stopped == [old]
    assert owner_file.read_text() == str(new)
