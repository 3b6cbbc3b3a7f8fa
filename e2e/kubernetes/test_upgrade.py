"""Upgrades under load, on real pods.

While a client in the cluster writes steadily (writer.py, in a pod of our image, through the
network's Service with the operator-issued client certificate):

1. ``helm upgrade`` of the chart to a second tag of our image: the operator Deployment surges a
   standby, the old pod stops, releases the Lease, and the new one takes it. Proven from the
   Lease's every change (watched) and the operator pods' own logs: never a holder other than
   the old pod, nobody, then the new pod; the new pod ran before the old one let go and
   acquired only after it did. The network's pods are untouched (its image is pinned).
2. The BecoNetwork's image changes to the new tag: user nodes roll one at a time, never fewer
   than the quorum Ready (every pod event watched), and the network comes back Ready.
3. ``kubectl beco restart demo --role user --wait``: the same, requested through the operator.
4. The writer stops, resolves every indeterminate answer through the outcome API (as ``beco
   outcome`` does) and checks every acknowledged write in the history with an inclusion proof
   against a head signed by the SST key: 0 lost. Commits that failed in each phase are
   counted, printed and written to ``upgrade-results.json`` (docs/operations.md quotes them).

Opt-in (see conftest.py); ``make e2e-k8s PYTEST_ARGS='e2e/kubernetes/test_upgrade.py'``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.fixtures import real_cluster_only

from .conftest import NETWORK, OPERATOR_NS, RELEASE, Target

pytestmark = [pytest.mark.realcluster, pytest.mark.slow, real_cluster_only]

HERE = Path(__file__).resolve().parent
WRITER = "upgrade-writer"
NEW_TAG_SUFFIX = "-upgrade"
USER_SEL = f"beco.dev/network={NETWORK},beco.dev/role=user"
OPERATOR_SEL = "app.kubernetes.io/name=beco-operator"
NODE_ROLES = ("user", "rendezvous", "validator", "sst")  # Postgres keeps its own image
KUBECTL_BECO = Path(sys.executable).parent / "kubectl-beco"


def _wait(cond: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _json(k8s: Target, *args: str) -> Any:
    return json.loads(k8s.kubectl(*args, "-o", "json"))


def _ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


class Watch:
    """Every event of a watched list (pods of a selector, or one Lease), in a thread."""

    def __init__(self, k8s: Target, kind: str, namespace: str, selector: str = "") -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(str(k8s.kubeconfig))  # type: ignore[no-untyped-call]
        if kind == "pods":
            self.list: Any = client.CoreV1Api(api).list_namespaced_pod
        else:
            self.list = client.CoordinationV1Api(api).list_namespaced_lease
        self.namespace = namespace
        self.selector = selector
        self.kind = kind
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.state: dict[str, dict[str, Any]] = {}
        self.ready_counts: list[int] = []
        self.unready_counts: list[int] = []
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _note(self, etype: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self.events.append((time.time(), etype, obj))
        if etype == "DELETED":
            self.state.pop(name, None)
        else:
            self.state[name] = obj
        ready = [_ready(p) for p in self.state.values()]
        self.ready_counts.append(sum(ready))
        self.unready_counts.append(len(ready) - sum(ready))

    def _run(self) -> None:
        from kubernetes import watch

        rv = ""
        try:
            first = self.list(self.namespace, label_selector=self.selector)
            rv = first.metadata.resource_version
            api = self.list.__self__.api_client
            for item in first.items:
                self._note("EXISTING", api.sanitize_for_serialization(item))
            while not self._stop.is_set():
                w = watch.Watch()  # type: ignore[no-untyped-call]
                for ev in w.stream(  # type: ignore[no-untyped-call]
                    self.list,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=rv,
                    timeout_seconds=30,
                ):
                    obj = api.sanitize_for_serialization(ev["object"])
                    rv = obj["metadata"]["resourceVersion"]
                    self._note(ev["type"], obj)
                    if self._stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
                        break
        except Exception as exc:
            if not self._stop.is_set():
                self.error = exc

    def start(self) -> Watch:
        self._thread.start()
        _wait(lambda: self.events or self._started_empty(), 30, f"the {self.kind} watch")
        return self

    def _started_empty(self) -> bool:
        return self._thread.is_alive() and self.kind == "leases"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=35)
        if self.error is not None:
            raise AssertionError(f"the {self.kind} watch broke off: {self.error}")


@dataclass
class Phase:
    name: str
    start: float
    end: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


def _log_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _when(lines: list[dict[str, Any]], needle: str) -> datetime | None:
    for obj in lines:
        if needle in str(obj.get("message", "")):
            return datetime.fromisoformat(str(obj["timestamp"]))
    return None


def _operator_pods(k8s: Target) -> list[dict[str, Any]]:
    pods = _json(k8s, "get", "pods", "-n", OPERATOR_NS, "-l", OPERATOR_SEL)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _lease_name(k8s: Target) -> str:
    deps = _json(k8s, "get", "deployments", "-n", OPERATOR_NS, "-l", OPERATOR_SEL)["items"]
    (dep,) = deps
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-elect" in args, args
    return next(str(a).split("=", 1)[1] for a in args if str(a).startswith("--lease-name="))


def _user_uids(k8s: Target) -> dict[str, str]:
    pods = _json(k8s, "get", "pods", "-l", USER_SEL)["items"]
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}


def _network_uids(k8s: Target) -> dict[str, str]:
    pods = _json(k8s, "get", "pods", "-l", f"beco.dev/network={NETWORK}")["items"]
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}


def _network(k8s: Target) -> dict[str, Any]:
    got: dict[str, Any] = _json(k8s, "get", f"beconetwork/{NETWORK}")
    return got


def _settled(k8s: Target, image: str) -> bool:
    """Ready at its generation, no rollout pending, every network pod on ``image``."""
    net = _network(k8s)
    st = net.get("status") or {}
    if st.get("phase") != "Ready" or st.get("observedGeneration") != net["metadata"]["generation"]:
        return False
    if (st.get("rollout") or {}).get("pending"):
        return False
    pods = _json(k8s, "get", "pods", "-l", f"beco.dev/network={NETWORK}")["items"]
    nodes = [p for p in pods if p["metadata"]["labels"].get("beco.dev/role") in NODE_ROLES]
    return all(_ready(p) and p["spec"]["containers"][0]["image"] == image for p in nodes)


@pytest.fixture(scope="module")
def net(operator: Target) -> Target:
    """The demo network, Ready (created from examples/network.yaml if an earlier module of
    the suite deleted it)."""
    if operator.kubectl("get", f"beconetwork/{NETWORK}", check=False).strip() == "":
        operator.kubectl("apply", "-f", "examples/network.yaml")
    operator.kubectl(
        "wait", "--for=condition=Ready", f"beconetwork/{NETWORK}", "--timeout=240s", timeout=300
    )
    return operator


def _writer_pod(image: str) -> dict[str, Any]:
    tls, script = "/etc/beco/tls", "/etc/beco/writer"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": WRITER, "labels": {"app": WRITER}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "writer",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", f"{script}/writer.py"],
                    "args": [
                        f"--endpoint={NETWORK}.default.svc:9001",
                        f"--server-name={NETWORK}.default.svc",
                        f"--tls-dir={tls}",
                        "--membership=/etc/beco/membership/membership.json",
                    ],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "tls", "mountPath": tls, "readOnly": True},
                        {"name": "membership", "mountPath": "/etc/beco/membership"},
                        {"name": "script", "mountPath": script},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "tls", "secret": {"secretName": f"{NETWORK}-client-tls"}},
                {"name": "membership", "configMap": {"name": f"{NETWORK}-membership"}},
                {"name": "script", "configMap": {"name": WRITER}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }


@dataclass
class Writer:
    k8s: Target

    def logs(self) -> list[dict[str, Any]]:
        return _log_lines(self.k8s.kubectl("logs", f"pod/{WRITER}", check=False))

    def acked_after(self, t: float) -> int:
        return sum(1 for x in self.logs() if x.get("result") == "acked" and float(x["t1"]) > t)


@pytest.fixture
def writer(net: Target, tmp_path: Path) -> Iterator[Writer]:
    k8s = net
    k8s.kubectl("delete", "pod", WRITER, "--ignore-not-found", "--wait=true", timeout=120)
    k8s.kubectl("delete", "configmap", WRITER, "--ignore-not-found")
    k8s.kubectl("create", "configmap", WRITER, f"--from-file=writer.py={HERE / 'writer.py'}")
    manifest = tmp_path / "writer.json"
    manifest.write_text(json.dumps(_writer_pod(k8s.image)))
    k8s.kubectl("apply", "-f", str(manifest))
    w = Writer(k8s)
    try:
        _wait(lambda: any(x.get("kind") == "ready" for x in w.logs()), 180, "the writer to start")
        yield w
    finally:
        k8s.kubectl("delete", "pod", WRITER, "--ignore-not-found", "--wait=false", check=False)
        k8s.kubectl("delete", "configmap", WRITER, "--ignore-not-found", check=False)


def _stop_writer(w: Writer) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    w.k8s.kubectl("exec", f"pod/{WRITER}", "--", "python", "-c", "open('/tmp/stop', 'w').close()")

    def done() -> bool:
        pod = _json(w.k8s, "get", f"pod/{WRITER}")
        return pod["status"].get("phase") in ("Succeeded", "Failed")

    _wait(done, 600, "the writer to resolve and verify", interval=3)
    lines = w.logs()
    summary = next((x for x in lines if x.get("kind") == "summary"), None)
    assert summary is not None, w.k8s.kubectl("logs", f"pod/{WRITER}", check=False)[-3000:]
    return [x for x in lines if x.get("kind") == "write"], summary


def _not_committed(writes: list[dict[str, Any]], resolved: dict[int, str]) -> list[dict[str, Any]]:
    """Writes that did not commit: failed, or indeterminate and resolved as not committed."""
    return [
        x
        for x in writes
        if x["result"] == "failed"
        or (x["result"] == "indeterminate" and resolved.get(int(x["i"])) != "committed")
    ]


def _results_path(tmp_path: Path) -> Path:
    workdir = os.environ.get("BECO_E2E_WORKDIR")
    d = Path(workdir) if workdir else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    return d / "upgrade-results.json"


def _new_image(k8s: Target) -> str:
    """A second tag of our image, loaded into the cluster's nodes like the first."""
    repo, _, tag = k8s.image.rpartition(":")
    new = f"{repo}:{tag}{NEW_TAG_SUFFIX}"
    if k8s.load_images is None:
        pytest.skip(f"cannot load {new} into a cluster given by kubeconfig; load it and rerun")
    podman = shutil.which("podman") or "podman"
    subprocess.run([podman, "tag", k8s.image, new], check=True, timeout=120)
    k8s.load_images([new])
    return new


@pytest.mark.timeout(2400)
def test_helm_upgrade_and_image_change_under_load_lose_no_acknowledged_write(
    net: Target, writer: Writer, tmp_path: Path
) -> None:
    k8s = net
    repo, _, old_tag = k8s.image.rpartition(":")
    new_image = _new_image(k8s)
    new_tag = new_image.rpartition(":")[2]
    quorum = int(_network(k8s)["status"]["quorum"])
    phases: list[Phase] = []

    # The network's image pinned to what it runs: the operator's upgrade alone must not roll it.
    k8s.kubectl(
        "patch", f"beconetwork/{NETWORK}", "--type=merge", "-p",
        json.dumps({"spec": {"image": {"repository": repo, "tag": old_tag}}}),
    )  # fmt: skip
    _wait(lambda: _settled(k8s, k8s.image), 120, "the pinned network to settle")
    before = _network_uids(k8s)

    # ---- 1. helm upgrade of the operator ------------------------------------------------------
    lease_name = _lease_name(k8s)
    (old_pod,) = _operator_pods(k8s)
    old_name = old_pod["metadata"]["name"]
    old_logs = subprocess.Popen(
        [str(k8s.bin_dir / "kubectl"), "logs", "-f", "-n", OPERATOR_NS, f"pod/{old_name}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=k8s.env(),
    )  # fmt: skip
    leases = Watch(k8s, "leases", OPERATOR_NS).start()
    users = Watch(k8s, "pods", "default", USER_SEL).start()
    _wait(lambda: writer.acked_after(time.time() - 30) >= 3, 120, "writes to commit")
    ph = Phase("helm upgrade", time.time())
    k8s.helm(
        "upgrade", RELEASE, "charts/beco-operator", "--namespace", OPERATOR_NS,
        "--reuse-values", "--set", f"image.tag={new_tag}", "--wait", "--timeout", "180s",
        timeout=240,
    )  # fmt: skip
    (new_pod,) = _wait(
        lambda: (
            [p for p in _operator_pods(k8s) if p["metadata"]["name"] != old_name]
            if len(_operator_pods(k8s)) == 1
            else None
        ),
        120,
        "the old operator pod to go",
    )
    new_name = new_pod["metadata"]["name"]
    assert new_pod["spec"]["containers"][0]["image"] == new_image
    new_lines = _log_lines(
        _wait(
            lambda: (lambda t: t if "acquired the leader lease" in t else "")(
                k8s.kubectl("logs", "-n", OPERATOR_NS, f"pod/{new_name}", check=False)
            ),
            60,
            "the new operator to take the lease",
        )
    )
    out, _ = old_logs.communicate(timeout=60)
    old_lines = _log_lines(out)
    ph.end = time.time()
    phases.append(ph)
    leases.stop()
    released = _when(old_lines, "released the leader lease")
    acquired = _when(new_lines, "acquired the leader lease")
    started = datetime.fromisoformat(
        new_pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].replace(
            "Z", "+00:00"
        )
    )
    assert released is not None, f"{old_name} did not release the lease:\n{out[-3000:]}"
    assert acquired is not None and acquired >= released, (acquired, released)
    # both pods ran at once (the surge), yet only one held the Lease at any moment
    assert started < released, (started, released)
    holders = [
        str((o.get("spec") or {}).get("holderIdentity") or "")
        for _, _, o in leases.events
        if o["metadata"]["name"] == lease_name
    ]
    seen = [h for i, h in enumerate(holders) if i == 0 or h != holders[i - 1]]
    assert seen in ([old_name, "", new_name], [old_name, new_name]), seen
    assert _network_uids(k8s) == before, "the operator's upgrade restarted network pods"
    ph.notes.update(
        old_pod=old_name,
        new_pod=new_name,
        lease_holders=seen,
        handover_s=round((acquired - released).total_seconds(), 3),
        new_pod_started_before_release_s=round((released - started).total_seconds(), 3),
    )

    # ---- 2. the network's image -----------------------------------------------------------------
    users.ready_counts.clear()
    users.unready_counts.clear()
    ph = Phase("image change", time.time())
    k8s.kubectl(
        "patch", f"beconetwork/{NETWORK}", "--type=merge", "-p",
        json.dumps({"spec": {"image": {"tag": new_tag}}}),
    )  # fmt: skip
    _wait(lambda: _settled(k8s, new_image), 600, "every node to run the new image", interval=3)
    ph.end = time.time()
    phases.append(ph)
    after = _user_uids(k8s)
    assert all(after[n] != before[n] for n in after), "a user node was not restarted"
    ph.notes.update(
        min_ready_user_nodes=min(users.ready_counts),
        max_unready_user_nodes=max(users.unready_counts),
        quorum=quorum,
    )
    assert min(users.ready_counts) >= quorum, users.ready_counts
    assert max(users.unready_counts) <= 1, users.unready_counts

    # ---- 3. kubectl beco restart --role user (the plugin of this installation) ---------------
    users.ready_counts.clear()
    users.unready_counts.clear()
    before_restart = _user_uids(k8s)
    ph = Phase("kubectl beco restart --role user", time.time())
    k8s.run(
        str(KUBECTL_BECO), "restart", NETWORK, "--role", "user", "--wait",
        "--timeout", "600", "-o", "json", timeout=660,
    )  # fmt: skip
    ph.end = time.time()
    phases.append(ph)
    after = _user_uids(k8s)
    assert all(after[n] != before_restart[n] for n in after), "a user node kept running"
    assert min(users.ready_counts) >= quorum, users.ready_counts
    assert max(users.unready_counts) <= 1, users.unready_counts
    ph.notes.update(
        min_ready_user_nodes=min(users.ready_counts),
        max_unready_user_nodes=max(users.unready_counts),
    )
    users.stop()

    # ---- 4. nothing acknowledged lost --------------------------------------------------------
    time.sleep(5)  # a few writes after the last phase
    writes, summary = _stop_writer(writer)
    resolved = {int(x["i"]): x["outcome"] for x in writer.logs() if x.get("kind") == "resolved"}
    missed = _not_committed(writes, resolved)
    report: dict[str, Any] = {
        "summary": {k: v for k, v in summary.items() if k != "lost"},
        "lost": summary["lost"],
        "phases": [],
    }
    for p in phases:
        during = [x for x in writes if p.start <= float(x["t0"]) <= p.end]
        report["phases"].append(
            {
                "phase": p.name,
                "seconds": round(p.end - p.start, 1),
                "writes": len(during),
                "acked": sum(1 for x in during if x["result"] == "acked"),
                "not_committed": sum(1 for x in missed if p.start <= float(x["t0"]) <= p.end),
                "indeterminate": sum(1 for x in during if x["result"] == "indeterminate"),
                "errors": sorted({str(x.get("code")) for x in during if x["result"] != "acked"}),
                # why: the first few distinct answers (the writer's log goes with the cluster)
                "error_samples": sorted(
                    {
                        f"{x.get('code')}: {x.get('details', '')}"
                        for x in during
                        if x["result"] != "acked"
                    }
                )[:5],
                **p.notes,
            }
        )
    path = _results_path(tmp_path)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\nupgrade under load ({path}):\n{json.dumps(report, indent=2, sort_keys=True)}")
    assert summary["lost"] == [], summary["lost"]
    # an indeterminate write the network never recorded (its signature expired unanswered)
    # did not commit, and the log agrees
    assert summary["unknown_in_log"] == 0, summary
    assert summary["verified"] == summary["acked"] + summary["indeterminate_committed"], summary
    assert summary["contiguous"], summary
    assert summary["acked"] > 0
