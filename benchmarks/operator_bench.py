"""Operator benchmarks on the real control plane with kwok nodes (``make bench-operator``).

Measures: seconds from apply to Ready for one network; the same for 20 networks
in 20 namespaces at once; API writes by the idle operator over 60 s (its own
write counter, and the resourceVersions of every network and child); the
operator's resident memory with 20 networks. Writes the ``operator`` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.doc import write_section
from tests.cluster.plane import ControlPlane
from tests.operator.harness import (
    OperatorProcess,
    install_crd,
    install_rbac,
    items,
    net_path,
    network,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[1]
KINDS = (
    "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "/apis/apps/v1/namespaces/{ns}/deployments",
    "/api/v1/namespaces/{ns}/services",
    "/api/v1/namespaces/{ns}/configmaps",
    "/api/v1/namespaces/{ns}/secrets",
    "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "/apis/beco.dev/v1alpha1/namespaces/{ns}/beconetworks",
)


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def versions(cp: ControlPlane, namespaces: list[str]) -> dict[str, str]:
    out = {}
    for ns in namespaces:
        for k in KINDS:
            for o in items(cp, k.format(ns=ns)):
                out[f"{k.format(ns=ns)}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
    return out


def make_ns(cp: ControlPlane, ns: str) -> None:
    cp.rest.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    )
    cp.wait_for(lambda: cp.exists(f"/api/v1/namespaces/{ns}/serviceaccounts/default"), 30, "sa")


def apply_and_wait(cp: ControlPlane, ns: str) -> float:
    t0 = time.perf_counter()
    cp.api("POST", net_path(ns), network("demo", ns))
    wait_ready(cp, ns, "demo", timeout=600)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--networks", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="beco-opbench-") as tmp,
        ControlPlane(Path(tmp) / "cp") as cp,
    ):
        install_crd(cp)
        kubeconfig = install_rbac(cp)
        op = OperatorProcess(kubeconfig, Path(tmp) / "operator.log")
        op.start()
        try:
            assert op.proc is not None
            make_ns(cp, "bench-one")
            one = apply_and_wait(cp, "bench-one")
            spaces = [f"bench-{i:02d}" for i in range(args.networks)]
            for ns in spaces:
                make_ns(cp, ns)
            cpu0 = cpu_seconds(op.proc.pid)
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.networks) as pool:
                each = list(pool.map(lambda ns: apply_and_wait(cp, ns), spaces))
            many = time.perf_counter() - t0
            op_cpu = cpu_seconds(op.proc.pid) - cpu0
            load1 = os.getloadavg()[0]
            time.sleep(10)  # let the last status writes and events settle
            all_ns = ["bench-one", *spaces]
            writes0 = op.metric("beco_operator_api_writes_total")
            rv0 = versions(cp, all_ns)
            time.sleep(args.idle_seconds)
            writes = op.metric("beco_operator_api_writes_total") - writes0
            rv1 = versions(cp, all_ns)
            changed = sorted(k for k in rv0 if rv1.get(k) != rv0[k])
            rss = rss_mb(op.proc.pid)
        finally:
            op.stop()
    results: dict[str, Any] = {
        "one": one,
        "many": many,
        "each_max": max(each),
        "writes": writes,
        "changed": len(changed),
        "rss": rss,
        "op_cpu": op_cpu,
        "load": (load0, load1),
    }
    print(results)
    cpu = os.cpu_count()
    body = f"""
### Operator (`make bench-operator`)

{datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}, {platform.machine()}, {cpu} cores (shared), Python {platform.python_version()};
real kube-apiserver/etcd/scheduler/controller-manager with kwok nodes in zones a, b, c
(`python -m benchmarks.operator_bench`). Each network: 3 zones x 1 user node, managed Postgres,
7 pods; the operator runs as a process under its ServiceAccount (deploy/rbac).

| measure | result | target |
|---|---|---|
| apply -> Ready, one network | {one:.1f} s | |
| apply -> Ready, {args.networks} networks in {args.networks} namespaces at once (all Ready) | {many:.1f} s (slowest single network {max(each):.1f} s; operator CPU {op_cpu:.1f} s; 1-min load average {load0:.1f} -> {load1:.1f}) | |
| API writes by the idle operator over {args.idle_seconds:.0f} s ({args.networks + 1} networks) | {writes:.0f} (objects whose resourceVersion changed: {len(changed)}) | 0 |
| operator resident memory with {args.networks + 1} networks | {rss:.0f} MB | < 150 MB |

Readiness comes from kwok's pod stages (no containers run), so these figures measure the
operator and the control plane, not the nodes. Leader election (`--leader-elect`, off here)
adds one Lease update every 5 s.
"""
    write_section("operator", body)


if __name__ == "__main__":
    main()
