"""Day two on real pods, on the journey's ``demo`` network, under a steady write load from a
client outside the cluster, each step asserted: the SST pod and then the Postgres pod deleted
(every acknowledged write is still there: history and inclusion proofs), a key rotation
(one pod at a time, never fewer than a quorum Ready, writes keep committing, the SST keeps its
log key), NetworkPolicy enforcement, a scale to two user nodes per zone (membership 6,
quorum 4), and last the network deleted (every child gone but what its retained log keeps).

These steps change the shared network, so they run after every other e2e test
(marker ``journey_end``, see conftest.py). The README's commands for them run as written.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from beco_operator import keyring, kinds, names, render
from beco_operator.spec import parse as parse_spec

from tests.cluster.fixtures import real_cluster_only

from .conftest import FIGURES, NETWORK, Target, port_forward
from .docs_commands import RAN, doc_commands, run_doc
from .test_backup import COMMANDS as BACKUP_RAN
from .test_journey import BECO, Cli, _credentials, _wait

pytestmark = [
    pytest.mark.realcluster,
    pytest.mark.slow,
    pytest.mark.journey_end,
    real_cluster_only,
]

NS = "default"
USER_SEL = f"{names.NETWORK_LABEL}={NETWORK},{names.ROLE_LABEL}={names.ROLE_USER}"
SST_POD = f"{names.singleton(NETWORK, names.ROLE_SST)}-0"
PG_POD = f"{names.postgres(NETWORK)}-0"
PG_HEADLESS, PG_SERVICE = names.postgres(NETWORK), names.postgres_service(NETWORK)
COMMITTED = re.compile(r"committed: sequence (\d+)")


def _readme(prefix: str) -> str:
    """The one README/docs command starting with ``prefix``, as written."""
    found = [c for c in doc_commands() if c.startswith(prefix)]
    assert len(found) == 1, f"expected one doc command starting {prefix!r}: {found}"
    return found[0]


class Forward:
    """``kubectl port-forward service/demo`` kept up: the pod it picked may be restarted
    (rotation), so a dead or failing forward is replaced. ``cli.port`` follows it."""

    def __init__(self, k8s: Target, cli: Cli) -> None:
        self.k8s, self.cli = k8s, cli
        self._stack: list[Iterator[int]] = []
        self.restarts = 0

    def start(self) -> None:
        cm = port_forward(self.k8s, f"service/{NETWORK}", names.PORT)
        self.cli.port = cm.__enter__()
        self._stack.append(cm)  # type: ignore[arg-type]

    def stop(self) -> None:
        while self._stack:
            self._stack.pop().__exit__(None, None, None)  # type: ignore[attr-defined]

    def renew(self) -> None:
        self.stop()
        for _ in range(30):  # the Service may have no ready endpoint for a moment
            try:
                self.start()
                self.restarts += 1
                return
            except AssertionError:
                time.sleep(1)
        raise AssertionError("could not port-forward to service/demo for 30 tries")


@dataclass
class Load:
    """Carol sets her first name to w0, w1, ... one write after the other until stopped;
    a failed write renews the port-forward (its pod may be the one restarted)."""

    beco: Cli
    forward: Forward
    acked: list[tuple[float, str, int]] = field(default_factory=list)  # (time, value, sequence)
    failed: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                value = f"w{i}"
                try:
                    res = self.beco.run("--key", "carol.key", "set", "first", value)
                except subprocess.TimeoutExpired:  # an outcome never acknowledged
                    self.failed.append((time.monotonic(), "timed out"))
                    self.forward.renew()
                    continue
                now = time.monotonic()
                m = COMMITTED.search(res.stdout)
                if res.returncode == 0 and m:
                    self.acked.append((now, value, int(m[1])))
                else:
                    self.failed.append((now, (res.stderr or res.stdout).strip()[-300:]))
                    self.forward.renew()
                i += 1
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error.append(exc)

    def acked_between(self, start: float, end: float) -> list[tuple[float, str, int]]:
        return [a for a in self.acked if start < a[0] <= end]


@dataclass
class Writer:
    beco: Cli
    forward: Forward
    dir: Path


@pytest.fixture(scope="module")
def writer(demo: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Writer]:
    """Carol, a user of her own, with a CLI through a port-forward that survives restarts."""
    d = tmp_path_factory.mktemp("carol")
    subprocess.run([str(BECO), "keygen", "--out", str(d / "carol.key")], check=True)
    _credentials(demo, d)
    beco = Cli(d, 0)
    fwd = Forward(demo, beco)
    fwd.start()
    try:
        beco.ok("--key", "carol.key", "user", "create", "--first", "Carol")
        yield Writer(beco, fwd, d)
    finally:
        fwd.stop()


@dataclass
class Loaded:
    load: Load
    thread: threading.Thread

    def finish(self) -> Load:
        self.load.stop.set()
        self.thread.join(180)
        assert not self.thread.is_alive(), "the write load did not stop"
        assert not self.load.error, self.load.error
        return self.load


def _start_load(w: Writer) -> Loaded:
    load = Load(w.beco, w.forward)
    t = threading.Thread(target=load.run, daemon=True)
    t.start()
    _wait(lambda: len(load.acked) >= 2 or bool(load.error), 120, "the write load to commit")
    assert not load.error, load.error
    return Loaded(load, t)


def _committed_after(load: Load, t: float, what: str, timeout: float = 180) -> None:
    _wait(lambda: any(a[0] > t for a in load.acked) or bool(load.error), timeout, what)
    assert not load.error, load.error


def _history(w: Writer) -> set[int]:
    out = json.loads(w.beco.ok("--output", "json", "--key", "carol.key", "user", "history"))
    return {int(e.get("sequence", 0)) for e in out.get("entries", [])}


def _prove(w: Writer, sequence: int, membership: Path | None = None) -> None:
    """An inclusion proof of Carol's change ``sequence``, verified offline against the SST key
    of ``membership`` (default: the one read at the start)."""
    beco = w.beco
    if membership is not None:
        beco = Cli(w.dir, w.beco.port)
        env = beco.env()
        env["BECO_MEMBERSHIP"] = str(membership)
        res = subprocess.run(
            [str(BECO), "--key", "carol.key", "proof", "inclusion", "--sequence", str(sequence)],
            capture_output=True,
            text=True,
            cwd=w.dir,
            env=env,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        return
    beco.ok("--key", "carol.key", "proof", "inclusion", "--sequence", str(sequence))


def _pods(k8s: Target, selector: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = json.loads(
        k8s.kubectl("get", "pods", "-l", selector, "-o", "json")
    )["items"]
    return items


def _uids(k8s: Target) -> dict[str, str]:
    return {
        p["metadata"]["name"]: p["metadata"]["uid"]  # type: ignore[index]
        for p in _pods(k8s, f"{names.NETWORK_LABEL}={NETWORK}")
    }


def _network(k8s: Target) -> dict[str, object]:
    obj: dict[str, object] = json.loads(k8s.kubectl("get", f"beconetwork/{NETWORK}", "-o", "json"))
    return obj


def _ready(net: dict[str, object]) -> bool:
    status = net.get("status") or {}
    assert isinstance(status, dict)
    return (
        status.get("phase") == "Ready"
        and status.get("observedGeneration")
        == (
            net["metadata"]["generation"]  # type: ignore[index]
        )
    )


def _delete_and_return(k8s: Target, pod: str) -> float:
    """Delete ``pod`` and wait for its replacement to be Ready; the seconds it took."""
    old = _uids(k8s).get(pod)
    start = time.monotonic()
    k8s.kubectl("delete", "pod", pod, "--wait=true", timeout=180)
    _wait(lambda: _uids(k8s).get(pod, old) != old, 120, f"{pod} to be re-created")
    k8s.kubectl("wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=180s", timeout=200)
    return time.monotonic() - start


# Run inside the SST pod: resolves each name (argv) every 0.5 s and prints the addresses.
DNS_PROBE = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    out = []
    for name in sys.argv[2:]:
        try:
            out.append(socket.getaddrinfo(name, 5432, socket.AF_INET)[0][4][0])
        except OSError:
            out.append("-")
    print(*out, flush=True)
    time.sleep(0.5)
"""


@dataclass
class KubectlLines:
    """A long-running kubectl command whose output lines ``on_line`` takes, in a thread."""

    k8s: Target
    proc: subprocess.Popen[str] | None = field(default=None, init=False)
    thread: threading.Thread | None = field(default=None, init=False)

    def run(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [self.k8s.kubectl_bin, *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.k8s.env(),
        )  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.on_line(line)

    def on_line(self, line: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.thread is not None:
            self.thread.join(10)


@dataclass
class DnsWatch(KubectlLines):
    """What the SST's pod resolves for the headless Postgres name (the pod's own record)
    and for the cluster-IP Service its DSN names, while Postgres is replaced: the figures
    behind docs/operator.md's reason for the cluster IP. Figures only, never asserted."""

    names: tuple[str, ...] = ()
    seen: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)

    def start(self, seconds: float) -> None:
        self.run("exec", SST_POD, "--", "python3", "-c", DNS_PROBE, str(seconds), *self.names)

    def on_line(self, line: str) -> None:
        parts = tuple(line.split())
        if len(parts) == len(self.names):
            self.seen.append((time.monotonic(), parts))

    def record(self, deleted: float, ready: float) -> None:
        """FIGURES: per name, how long it did not resolve, and when (after the deletion) it
        first resolved to another address than before (the new pod's, or never: a cluster IP
        stays), next to the pod's return."""
        before = [ips for t, ips in self.seen if t <= deleted]
        for i, name in enumerate(self.names):
            short = name.split(".", 1)[0]
            after = [(t, ips[i]) for t, ips in self.seen if t > deleted]
            if not before or not after:
                continue
            missing = [t for t, ip in after if ip == "-"]
            FIGURES[f"DNS {short}: unresolvable after the Postgres deletion (s of it)"] = (
                (missing[-1] - missing[0]) if missing else 0.0
            )
            moved = next((t for t, ip in after if ip not in ("-", before[-1][i])), None)
            if moved is not None:
                FIGURES[f"DNS {short}: resolves to the new pod, after deletion (s)"] = (
                    moved - deleted
                )
                FIGURES[f"DNS {short}: resolves to the new pod, after Ready (s)"] = moved - ready


def test_sst_then_postgres_pod_deleted_every_acknowledged_write_survives(
    demo: Target, writer: Writer
) -> None:
    loaded = _start_load(writer)
    dns: DnsWatch | None = None
    try:
        before_sst = time.monotonic()
        FIGURES["SST pod deleted -> Ready (s)"] = _delete_and_return(demo, SST_POD)
        _committed_after(loaded.load, time.monotonic(), "a write after the SST returned")
        dns = DnsWatch(demo, tuple(f"{n}.{NS}.svc" for n in (PG_HEADLESS, PG_SERVICE)))
        dns.start(150)
        time.sleep(3)  # a few answers from before the deletion
        before_pg = time.monotonic()
        FIGURES["Postgres pod deleted -> Ready (s)"] = _delete_and_return(demo, PG_POD)
        back = time.monotonic()
        _committed_after(loaded.load, back, "a write after Postgres returned")
        first_after = next(a[0] for a in loaded.load.acked if a[0] > back)
        FIGURES["Postgres pod deleted -> next write committed (s)"] = first_after - before_pg
        times = [a[0] for a in loaded.load.acked if a[0] <= first_after]
        around = [t for t in times if t <= before_pg][-1:] + [t for t in times if t > before_pg]
        FIGURES["Postgres pod deleted: longest time without a commit (s)"] = max(
            (b - a for a, b in itertools.pairwise(around)), default=0.0
        )
        time.sleep(max(0.0, before_pg + 75 - time.monotonic()))  # past CoreDNS' 30 s caching
        dns.stop()
        dns.record(before_pg, back)
    finally:
        if dns is not None:
            dns.stop()
        load = loaded.finish()
    seqs = [a[2] for a in load.acked]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    history = _history(writer)
    lost = [s for s in seqs if s not in history]
    assert not lost, f"acknowledged writes missing from the history: {lost}"
    # inclusion proofs: the first write, the last before each deletion, the last of all
    sample = {seqs[0], seqs[-1]}
    for t in (before_sst, before_pg):
        sample |= {max((a[2] for a in load.acked if a[0] <= t), default=seqs[0])}
    for seq in sorted(sample):
        _prove(writer, seq)
    got = json.loads(writer.beco.ok("--output", "json", "--key", "carol.key", "user", "get"))
    assert int(got.get("sequence", 0)) >= seqs[-1], got
    FIGURES["writes acknowledged / failed across SST + Postgres deletion"] = float(len(seqs))
    FIGURES["writes failed across SST + Postgres deletion"] = float(len(load.failed))


@dataclass
class ReadyWatch(KubectlLines):
    """``kubectl get pods --watch`` of the user nodes: the Ready count after every change."""

    # the user nodes' pod names: counted once every one was listed
    members: set[str] = field(default_factory=set)
    state: dict[str, tuple[str, bool]] = field(default_factory=dict)  # name -> (uid, ready)
    ready_counts: list[int] = field(default_factory=list)
    unready_counts: list[int] = field(default_factory=list)
    seen_uids: dict[str, set[str]] = field(default_factory=dict)

    TEMPLATE = (
        "{.metadata.name} {.metadata.uid} {.metadata.deletionTimestamp} "
        '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}'
    )

    def start(self) -> None:
        self.run("get", "pods", "-l", USER_SEL, "--watch", "-o", f"jsonpath={self.TEMPLATE}")

    def on_line(self, line: str) -> None:
        parts = line.split()
        if len(parts) < 2:
            return
        name, uid, rest = parts[0], parts[1], parts[2:]
        terminating = any(re.match(r"\d{4}-\d\d-\d\dT", p) for p in rest)
        ready = "True" in rest and not terminating
        self.state[name] = (uid, ready)
        self.seen_uids.setdefault(name, set()).add(uid)
        if not self.members <= set(self.state):
            return  # the initial listing, one pod at a time: not a count yet
        self.ready_counts.append(sum(1 for _, r in self.state.values() if r))
        self.unready_counts.append(sum(1 for _, r in self.state.values() if not r))


def _key_secret(k8s: Target, member: str) -> dict[str, object]:
    sec: dict[str, object] = json.loads(
        k8s.kubectl("get", "secret", names.key_secret(member), "-o", "json")
    )
    return sec


def _member_keys(k8s: Target) -> dict[str, str]:
    cm = json.loads(k8s.kubectl("get", "configmap", names.membership_configmap(NETWORK), "-o",
                                "json"))  # fmt: skip
    doc = json.loads(cm["data"][names.MEMBERSHIP_KEY])
    return {m["name"]: m["public_key"] for m in doc["members"]}


def test_key_rotation_restarts_one_pod_at_a_time_keeps_the_log_key_and_commits(
    demo: Target, writer: Writer, tmp_path: Path
) -> None:
    net0 = _network(demo)
    quorum = int(net0["status"]["quorum"])  # type: ignore[index]
    keys0 = _member_keys(demo)
    uids0 = _uids(demo)
    old_membership = tmp_path / "membership-before.json"
    old_membership.write_text((writer.dir / "membership.json").read_text())
    users = {str(p["metadata"]["name"]) for p in _pods(demo, USER_SEL)}  # type: ignore[index]
    watch = ReadyWatch(demo, users)
    watch.start()
    _wait(lambda: len(watch.ready_counts) >= 1, 60, "the pod watch to list every user node")
    assert watch.ready_counts[0] == len(users), watch.ready_counts
    loaded = _start_load(writer)
    try:
        start = time.monotonic()
        run_doc(demo, _readme("kubectl annotate bnet demo beco.dev/rotate-keys="))
        token = _network(demo)["metadata"]["annotations"][names.ROTATE_KEYS_ANNOTATION]  # type: ignore[index]
        slots = keyring.desired_slots(NETWORK, NS, parse_spec(net0["spec"], demo.image))  # type: ignore[arg-type]

        def done() -> bool:
            if any(keyring.rotation_token(_key_secret(demo, s.name)) != token for s in slots):
                return False
            uids = _uids(demo)
            if any(uids.get(m) == uids0.get(m) for m in uids0 if m != PG_POD):
                return False  # every node's pod restarted (Postgres has no key)
            return _ready(_network(demo))

        _wait(done, 900, "every key rotated, every pod restarted and the network Ready")
        end = time.monotonic()
        _committed_after(loaded.load, end, "a write after the rotation")
    finally:
        load = loaded.finish()
        watch.stop()
    FIGURES["key rotation of the whole network, annotate -> Ready (s)"] = end - start
    during = load.acked_between(start, end)
    FIGURES["writes committed during the rotation"] = float(len(during))
    FIGURES["writes failed during the rotation"] = float(len(load.failed))
    assert during, "no write committed during the rotation"
    low = min(watch.ready_counts)
    FIGURES["fewest user nodes Ready during the rotation"] = float(low)
    assert low >= quorum, f"ready user nodes fell to {low} < quorum {quorum}"
    assert max(watch.unready_counts) <= 1, "more than one user node down at once"
    assert all(len(u) >= 2 for u in watch.seen_uids.values()), watch.seen_uids
    # the SST's key is the log's identity: unchanged; every other member's key is new
    keys1 = _member_keys(demo)
    sst = names.singleton(NETWORK, names.ROLE_SST)
    assert keys1[sst] == keys0[sst]
    assert {m for m in keys0 if keys1[m] != keys0[m]} == set(keys0) - {sst}
    # a proof of a write after the rotation verifies against the SST key saved before it
    _prove(writer, load.acked[-1][2], membership=old_membership)
    _credentials(demo, writer.dir)  # later steps use the new membership


def test_network_policy_admits_members_only(demo: Target, tmp_path: Path) -> None:
    """A pod that is not a member (our image, a socket connect) reaches no singleton's port
    and not Postgres, while it does reach the user nodes' public port; a user node reaches
    the singletons, and only the SST reaches Postgres."""
    singletons = {names.singleton(NETWORK, r): names.PORT for r in names.SINGLETON_ROLES}
    # the headless name (the pod) and the cluster IP the SST's DSN names
    pg = {names.postgres(NETWORK): names.PG_PORT, names.postgres_service(NETWORK): names.PG_PORT}
    public = {names.client_service(NETWORK): names.PORT}
    targets = {**singletons, **pg, **public}
    script = (
        "import json,socket\n"
        f"t={json.dumps(targets)}\n"
        "r={}\n"
        "for h,p in t.items():\n"
        "    try:\n"
        "        socket.create_connection((h,p),timeout=4).close(); r[h]=True\n"
        "    except OSError as e:\n"
        "        r[h]=False\n"
        "print(json.dumps(r))\n"
    )
    probe = "np-probe"
    demo.kubectl("delete", "pod", probe, "--ignore-not-found", "--wait=true", timeout=120)
    demo.kubectl(
        "run", probe, f"--image={demo.image}", "--image-pull-policy=IfNotPresent",
        "--restart=Never", "--labels=app=np-probe", "--command", "--", "python3", "-c", script,
    )  # fmt: skip
    try:
        _wait(
            lambda: (
                demo.kubectl("get", "pod", probe, "-o", "jsonpath={.status.phase}").strip()
                in ("Succeeded", "Failed")
            ),
            180,
            "the probe pod to finish",
        )
        outsider = json.loads(demo.kubectl("logs", probe).strip().splitlines()[-1])
    finally:
        demo.kubectl("delete", "pod", probe, "--ignore-not-found", "--wait=false")

    def from_member(pod: str) -> dict[str, bool]:
        out = demo.kubectl("exec", pod, "--", "python3", "-c", script, timeout=120)
        got: dict[str, bool] = json.loads(out.strip().splitlines()[-1])
        return got

    user = from_member(f"{names.user_member(NETWORK, 'a', 0)}")
    sst = from_member(SST_POD)
    assert outsider == {**dict.fromkeys(singletons, False), **dict.fromkeys(pg, False),
                        **dict.fromkeys(public, True)}, outsider  # fmt: skip
    assert user == {**dict.fromkeys(singletons, True), **dict.fromkeys(pg, False),
                    **dict.fromkeys(public, True)}, user  # fmt: skip
    assert all(sst[h] for h in pg), sst


def test_scale_to_two_user_nodes_per_zone_under_write_load(demo: Target, writer: Writer) -> None:
    loaded = _start_load(writer)
    try:
        start = time.monotonic()
        run_doc(demo, _readme("kubectl scale bnet demo "))

        def scaled() -> bool:
            net = _network(demo)
            st = net.get("status") or {}
            return _ready(net) and (st.get("members"), st.get("quorum")) == (6, 4)  # type: ignore[union-attr]

        _wait(scaled, 600, "membership 6, quorum 4, Ready")
        end = time.monotonic()
        _committed_after(loaded.load, end, "a write after the scale")
    finally:
        load = loaded.finish()
    FIGURES["scale 3 -> 6 user nodes, scale -> Ready (s)"] = end - start
    assert load.acked_between(start, end), "no write committed while scaling"
    nodes = {
        n["metadata"]["name"]: n["metadata"]["labels"].get("topology.kubernetes.io/zone")
        for n in json.loads(demo.kubectl("get", "nodes", "-o", "json"))["items"]
    }
    pods = _pods(demo, USER_SEL)
    zones = sorted(nodes[p["spec"]["nodeName"]] for p in pods)  # type: ignore[index]
    assert zones == ["a", "a", "b", "b", "c", "c"], zones
    doc = json.loads(
        json.loads(
            demo.kubectl("get", "configmap", names.membership_configmap(NETWORK), "-o", "json")
        )["data"][names.MEMBERSHIP_KEY]
    )
    assert doc["quorum"] == 4
    assert len([m for m in doc["members"] if m.get("role") == names.ROLE_USER]) == 6, doc
    row = run_doc(demo, _readme("kubectl get bnet demo")).splitlines()[1].split()
    assert row[:6] == ["demo", "a,b,c", "6", "4", "6/6", "Ready"], row


def test_docs_cluster_commands_as_written(demo: Target, tmp_path: Path) -> None:
    """The quick start's credential commands, run as written, give what the suite uses."""
    run_doc(demo, _readme("kubectl get configmap demo-membership"), cwd=tmp_path)
    cm = json.loads(demo.kubectl("get", "configmap", names.membership_configmap(NETWORK), "-o",
                                 "json"))  # fmt: skip
    assert (tmp_path / "membership.json").read_text() == cm["data"][names.MEMBERSHIP_KEY]
    run_doc(demo, _readme("for k in ca.crt tls.crt tls.key"), cwd=tmp_path)
    sec = json.loads(demo.kubectl("get", "secret", names.client_tls_secret(NETWORK), "-o", "json"))
    for k in ("ca.crt", "tls.crt", "tls.key"):
        assert (tmp_path / k).read_bytes() == base64.b64decode(sec["data"][k]), k
    assert "Ready" in run_doc(demo, "kubectl beco status demo", cwd=tmp_path)
    zones = run_doc(demo, _readme("kubectl get nodes -L topology.kubernetes.io/zone"))
    assert {ln.split()[-1] for ln in zones.splitlines()[1:] if ln.strip()} >= {"a", "b", "c"}


def _children(k8s: Target) -> dict[tuple[str, str], str]:
    """Every object labelled as this network's, of every kind the operator watches or prunes
    (kinds.py) plus the volume claims, that the API serves: (kind, name) -> uid."""
    served = k8s.kubectl("api-resources", "-o", "name")
    out: dict[tuple[str, str], str] = {}
    table = [k for k in kinds.KINDS if (k.watch or k.prune) and k.namespaced]
    table.append(kinds.BY_KIND["PersistentVolumeClaim"])
    for k in table:
        group = k.api_version.rsplit("/", 1)[0] if "/" in k.api_version else ""
        resource = f"{k.plural}.{group}" if group else k.plural
        if resource not in served.split():
            continue
        got = json.loads(k8s.kubectl("get", resource, "-l", f"{names.NETWORK_LABEL}={NETWORK}",
                                     "-o", "json"))  # fmt: skip
        for o in got["items"]:
            out[(k.kind, o["metadata"]["name"])] = o["metadata"]["uid"]
    return out


def test_deleting_the_network_removes_every_child_but_the_retained_log(demo: Target) -> None:
    net = _network(demo)
    spec = parse_spec(net["spec"], demo.image)  # type: ignore[arg-type]
    before = _children(demo)
    assert {k for k, _ in before} >= {"Pod", "StatefulSet", "Service", "Secret", "ConfigMap"}
    # What outlives the network: exactly what follows its retained log (render.log_owners).
    kept: set[tuple[str, str]] = set()
    if not render.log_owners(spec.database, {"uid": "x"}):
        slots = keyring.desired_slots(NETWORK, NS, spec)
        kept |= {("Secret", names.key_secret(s.name)) for s in slots if keyring.follows_log(s)}
        kept |= {("Secret", names.postgres(NETWORK)), ("Secret", names.ca_secret(NETWORK))}
        kept |= {k for k in before if k[0] == "PersistentVolumeClaim"}
    start = time.monotonic()
    demo.kubectl("delete", f"beconetwork/{NETWORK}", "--wait=true", "--timeout=180s", timeout=200)
    left: dict[tuple[str, str], str] = {}

    def gone() -> bool:
        nonlocal left
        left = _children(demo)
        return set(left) <= kept

    _wait(gone, 300, "every child of the deleted network to go")
    FIGURES["BecoNetwork deleted -> every child gone (s)"] = time.monotonic() - start
    assert set(left) == kept, f"kept {sorted(left)}, expected {sorted(kept)}"
    # the retained log's objects, deleted together, as docs/operations.md says
    for kind, name in sorted(kept):
        demo.kubectl("delete", kind.lower(), name, "--wait=true", timeout=180)
    assert not _children(demo)


OTHER_NS = (
    "the journey's network is the quick start's, in the default namespace; this command "
    "names beco-demo (the same command without -n runs here)"
)
UPGRADE = (
    "the upgrade journey's (e2e/kubernetes/test_upgrade.py performs these steps through its "
    "own calls, not yet from the doc's text)"
)
# Doc commands the real-cluster journey does not run as written, each with why: a new or
# changed doc command fails the check below until it is run here or listed.
NOT_HERE = {
    "kubectl apply -f crds/ -f deploy/rbac/operator-rbac.yaml": "the operator without the chart: "
    "tests/operator/test_readme_commands.py runs that README block on the kwok control plane",
    "helm install beco-operator charts/beco-operator -n beco-system --create-namespace "
    "--set image.repository=registry.example.com/beco --set image.tag=0.1.0": "a registry image",
    "helm install beco-operator charts/beco-operator --namespace beco-system --create-namespace "
    "--set image.repository=registry.example.com/beco --set image.tag=0.1.0": "a registry image",
    "kubectl -n beco-system rollout status deployment/beco-operator": "release beco-operator; "
    "the journey's release is beco (the quick start's), installed with --wait",
    "kubectl port-forward service/demo 9001:9001 &": "a fixed local port; the suite forwards "
    "service/demo to a free one (test_journey.py, cli())",
    "kubectl beco status demo -n beco-demo": OTHER_NS,
    "kubectl beco rotate-keys demo -n beco-demo --wait": OTHER_NS,
    "kubectl beco connect demo -n beco-demo -- --key alice.key user get": OTHER_NS,
    "kubectl beco verify-log demo -n beco-demo --old-head head.json": OTHER_NS,
    "kubectl create namespace beco-demo && kubectl -n beco-demo apply -f examples/network.yaml": (
        OTHER_NS
    ),
    "kubectl -n beco-demo get beconetworks -w": OTHER_NS + "; a watch never exits",
    "kubectl create namespace beco-demo": OTHER_NS,
    "kubectl -n beco-demo apply -f examples/network.yaml": OTHER_NS,
    "kubectl beco rotate-keys demo -n beco-demo --wait --timeout 900": OTHER_NS,
    "kubectl beco connect demo -n beco-demo -- --key alice.key tree head --save head.json": (
        OTHER_NS
    ),
    "kubectl beco verify-log demo -n beco-demo --old-head head.json --save new-head.json": (
        OTHER_NS
    ),
    'kubectl -n beco-demo annotate bnet demo beco.dev/rotate-keys="$(date +%s)" --overwrite': (
        OTHER_NS
    ),
    "kubectl beco backup demo -n beco-demo --pvc beco-backups --wait": OTHER_NS,
    "kubectl beco restore demo -n beco-demo --from-pvc beco-backups --path demo/<stamp>.dump "
    "--wait": OTHER_NS,
    "kubectl beco restart demo -n beco-demo --role user --wait": OTHER_NS,
    "kubectl create configmap upgrade-writer --from-file=writer.py=e2e/kubernetes/writer.py": (
        UPGRADE
    ),
    "kubectl apply -f writer.json": UPGRADE,
    "kubectl patch beconetwork/demo --type=merge -p "
    """'{"spec": {"image": {"repository": "localhost/beco", "tag": "dev"}}}'""": UPGRADE,
    "helm upgrade beco charts/beco-operator --namespace beco-system --reuse-values "
    "--set image.tag=dev-upgrade --wait --timeout 180s": UPGRADE,
    """kubectl patch beconetwork/demo --type=merge -p '{"spec": {"image": {"tag": "dev-upgrade"}}}'""": UPGRADE,
    "kubectl beco restart demo --role user --wait --timeout 600 -o json": UPGRADE,
    "kubectl exec pod/upgrade-writer -- python -c \"open('/tmp/stop', 'w').close()\"": UPGRADE,
    "kubectl logs pod/upgrade-writer": UPGRADE,
}


def test_every_doc_command_is_run_or_says_why(request: pytest.FixtureRequest) -> None:
    """Runs last: every cluster command of README.md and docs/*.md ran as written in this
    session, or NOT_HERE says why not (and names only commands the docs still have)."""
    if request.config.getoption("keyword") or request.config.getoption("markexpr"):
        pytest.skip("a filtered run does not run every doc command")
    docs = doc_commands()
    # test_backup.py runs its walkthrough as written (it asserts COMMANDS equal the doc block).
    ran = set(RAN) | set(BACKUP_RAN.values())
    missing = {c: d for c, d in docs.items() if c not in ran and c not in NOT_HERE}
    assert not missing, f"doc commands neither run by the suite nor listed in NOT_HERE: {missing}"
    stale = [c for c in NOT_HERE if c not in docs]
    assert not stale, f"NOT_HERE lists commands the docs no longer have: {stale}"
