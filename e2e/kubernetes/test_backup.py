"""Backup and restore of the SST database on real pods (issue 11, item 2).

``examples/ledger.yaml`` (one zone, ``reclaimPolicy: Delete``) becomes Ready; a client writes
without pause; ``kubectl beco backup --wait`` dumps the database while the writes continue; the
writes go on and a head is saved after the backup; the network is deleted with its volume and
its Secrets (the SST key among them); restoring the backup over the newer saved head is refused
(exit 6); restoring it over the head saved before the backup brings the network back Ready with
every write acknowledged before the backup in the history, and ``kubectl beco verify-log``
proves the restored log extends the head saved before (the RFC 9162 consistency proof, checked
with the restored SST key). Then the operator itself refuses a restore into a database that
already holds a log (condition Restored=False, reason LogNotEmpty) and leaves the log untouched.

The ``kubectl`` commands run are the block of docs/operations.md, as written there.
Opt-in (see conftest.py); ``make e2e-k8s`` runs it on the real cluster of tests/cluster/real.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.cluster.fixtures import real_cluster_only

from .conftest import REPO, Target, port_forward

pytestmark = [pytest.mark.realcluster, pytest.mark.slow, real_cluster_only]

BIN = Path(sys.executable).parent
BECO = BIN / "beco"
NET, NS, PVC = (
    "ledger",
    "beco-backup",
    "beco-backups",
)  # its own namespace: the journey's stays as it expects
DOC = REPO / "docs" / "operations.md"
# The walkthrough of docs/operations.md, in the order this test runs it ($BACKUP: the path the
# backup printed).
COMMANDS = {
    "namespace": "kubectl create namespace beco-backup",
    "apply": "kubectl apply -f examples/ledger.yaml -n beco-backup",
    "backup": "kubectl beco backup ledger -n beco-backup --pvc beco-backups --wait -o json",
    "delete": "kubectl delete beconetwork ledger -n beco-backup --wait=true",
    "refused": "kubectl beco restore ledger -n beco-backup --from-pvc beco-backups --path $BACKUP "
    "--latest-head after-backup.json",
    "restore": "kubectl beco restore ledger -n beco-backup --from-pvc beco-backups --path $BACKUP "
    "--latest-head before-backup.json --wait -o json",
    "verify": "kubectl beco verify-log ledger -n beco-backup --old-head before-backup.json",
}
FIGURES: dict[str, float] = {}


def doc_commands() -> list[str]:
    text = DOC.read_text()
    block = re.search(r"<!-- e2e/kubernetes/test_backup.py -->\n```bash\n(.*?)```", text, re.S)
    assert block is not None, "docs/operations.md lost the backup walkthrough block"
    lines = [ln.split("  #", 1)[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln.startswith("kubectl ")]


@dataclass
class Session:
    """``beco`` through a port-forward to the network's client Service, with its membership
    and the client certificate the operator issued."""

    dir: Path
    port: int

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        d = self.dir
        env = {
            "PATH": f"{BECO.parent}:/usr/bin:/bin",
            "BECO_ENDPOINT": f"127.0.0.1:{self.port}",
            "BECO_MEMBERSHIP": str(d / "membership.json"),
            "BECO_TLS_CA": str(d / "ca.crt"),
            "BECO_TLS_CERT": str(d / "tls.crt"),
            "BECO_TLS_KEY": str(d / "tls.key"),
            "BECO_TLS_SERVER_NAME": f"{NET}.{NS}.svc",
        }
        return subprocess.run(
            [str(BECO), *args], capture_output=True, text=True, cwd=d, env=env, timeout=120
        )

    def ok(self, *args: str) -> str:
        res = self.run(*args)
        assert res.returncode == 0, f"beco {' '.join(args)}: exit {res.returncode}\n{res.stderr}"
        return res.stdout


@contextmanager
def session(k8s: Target, d: Path) -> Iterator[Session]:
    cm = json.loads(k8s.kubectl("get", "configmap", f"{NET}-membership", "-n", NS, "-o", "json"))
    (d / "membership.json").write_text(cm["data"]["membership.json"])
    sec = json.loads(k8s.kubectl("get", "secret", f"{NET}-client-tls", "-n", NS, "-o", "json"))
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (d / key).write_bytes(base64.b64decode(sec["data"][key]))
        (d / key).chmod(0o600)
    with port_forward(k8s, f"service/{NET}", 9001, namespace=NS) as port:
        yield Session(d, port)


@dataclass
class Load:
    """Alice sets her first name to w0, w1, ... one write after the other until stopped;
    each acknowledged write is kept as (time, proposal id, leaf index)."""

    beco: Session
    acked: list[tuple[float, str, int]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            res = self.beco.run("--output", "json", "--key", "alice.key", "set", "first", f"w{i}")
            if res.returncode == 0:
                c = json.loads(res.stdout)["commit"]
                self.acked.append((time.monotonic(), c["proposal_id"], int(c.get("leaf_index", 0))))
            else:
                self.failed.append(res.stderr.strip()[-300:])
            i += 1


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def _gone(k8s: Target, *what: str) -> bool:
    res = subprocess.run(
        [str(k8s.bin_dir / "kubectl"), "get", *what, "-n", NS, "--ignore-not-found", "-o", "name"],
        capture_output=True,
        text=True,
        env=k8s.env(),
        timeout=60,
    )
    return res.returncode == 0 and not res.stdout.strip()


def _head(path: Path) -> tuple[int, str]:
    d = json.loads(path.read_text())
    return int(d["tree_size"]), base64.b64decode(d["root_hash"]).hex()


def _ready(k8s: Target, timeout: int) -> None:
    try:
        k8s.kubectl(
            "wait",
            "--for=condition=Ready",
            f"beconetwork/{NET}",
            "-n",
            NS,
            f"--timeout={timeout}s",
            timeout=timeout + 30,
        )
    except AssertionError as exc:  # say why: the pods, the network's conditions, the events
        pods = k8s.kubectl("get", "pods", "-n", NS, "-o", "wide", check=False)
        conds = k8s.kubectl(
            "get",
            f"beconetwork/{NET}",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.conditions}",
            check=False,
        )
        events = k8s.kubectl("get", "events", "-n", NS, "--sort-by=.lastTimestamp", check=False)
        raise AssertionError(f"{exc}\n{pods}\n{conds}\n{events[-4000:]}") from None


@pytest.mark.timeout(2400)  # the first test of a session also starts the cluster
def test_backup_under_writes_delete_restore_ready_and_consistent(
    operator: Target, tmp_path: Path
) -> None:
    k8s = operator
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = k8s.env()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # kubectl finds the plugin kubectl-beco
    backup_path = ""

    def run(step: str) -> subprocess.CompletedProcess[str]:
        print(f"\n[test_backup] {step}: {COMMANDS[step]}", flush=True)
        argv = shlex.split(COMMANDS[step].replace("$BACKUP", backup_path))
        argv[0] = str(k8s.bin_dir / "kubectl")
        return subprocess.run(
            argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200
        )

    def ok(step: str) -> str:
        out = run(step)
        assert out.returncode == 0, f"{step}: exit {out.returncode}: {out.stdout}\n{out.stderr}"
        return out.stdout

    try:
        ok("namespace")
        start = time.monotonic()
        ok("apply")
        _ready(k8s, 300)
        FIGURES["apply -> Ready (s)"] = time.monotonic() - start
        subprocess.run([str(BECO), "keygen", "--out", str(tmp_path / "alice.key")], check=True)

        with session(k8s, tmp_path) as beco:
            beco.ok("--key", "alice.key", "user", "create", "--first", "Alice")
            load = Load(beco)
            writer = threading.Thread(target=load.run, daemon=True)
            writer.start()
            try:
                _wait(lambda: len(load.acked) >= 15, 120, "15 acknowledged writes")
                beco.ok("--key", "alice.key", "tree", "head", "--save", "before-backup.json")
                before_backup = list(load.acked)  # acknowledged before the backup started
                t0 = time.monotonic()
                meta = json.loads(ok("backup"))  # the writes continue meanwhile
                t1 = time.monotonic()
                during = [a for a in load.acked if t0 < a[0] < t1]
                _wait(
                    lambda: sum(1 for a in load.acked if a[0] > t1) >= 10,
                    120,
                    "10 writes after the backup",
                )
                beco.ok("--key", "alice.key", "tree", "head", "--save", "after-backup.json")
            finally:
                load.stop.set()
                writer.join(150)
        assert not load.failed, load.failed
        assert during, "no write was acknowledged while the backup ran"
        backup_path = meta["path"]
        size = int(meta["tree_size"])
        before, after = (
            _head(tmp_path / "before-backup.json"),
            _head(tmp_path / "after-backup.json"),
        )
        assert before[0] <= size < after[0], (before, meta, after)
        assert all(leaf < size for _, _, leaf in before_backup)
        FIGURES.update(
            {
                "backup tree size": size,
                "backup dump (bytes)": meta["dump_bytes"],
                "pg_dump (s)": meta["dump_ms"] / 1000,
                "kubectl beco backup --wait (s)": meta["seconds"],
                "writes acknowledged while the backup ran": len(during),
            }
        )

        # the network, its volume and its Secrets (the SST key among them) are gone
        ok("delete")
        for what in (
            f"pvc/data-{NET}-postgres-0",
            f"secret/{NET}-sst-key",
            f"secret/{NET}-postgres",
            f"secret/{NET}-ca",
        ):
            _wait(lambda w=what: _gone(k8s, w), 180, f"{what} to be deleted")  # type: ignore[misc]

        # older than a head already seen: refused, nothing created
        refused = run("refused")
        assert refused.returncode == 6, f"{refused.stdout}\n{refused.stderr}"
        assert "would rewind" in refused.stderr, refused.stderr
        assert _gone(k8s, f"beconetwork/{NET}")

        restored = json.loads(ok("restore"))
        FIGURES["kubectl beco restore --wait -> Ready (s)"] = restored["seconds"]
        assert restored["tree_size"] == size

        again = tmp_path / "again"
        again.mkdir()
        (again / "alice.key").write_bytes((tmp_path / "alice.key").read_bytes())
        with session(k8s, again) as beco:
            hist = json.loads(beco.ok("--output", "json", "--key", "alice.key", "user", "history"))
            kept = {(e["proposal_id"], int(e.get("leaf_index", 0))) for e in hist["entries"]}
            lost = [(p, leaf) for _, p, leaf in before_backup if (p, leaf) not in kept]
            assert not lost, f"acknowledged before the backup but not restored: {lost}"
            beco.ok("--key", "alice.key", "tree", "head", "--save", "restored.json")
            assert _head(again / "restored.json") == (size, meta["root_hash_hex"])
            beco.ok("--key", "alice.key", "set", "first", "after-restore")  # it goes on

        assert "extends the saved head" in ok("verify")
        # the writes after the backup are gone, and verify-log says so (exit 5)
        rolled = subprocess.run(
            shlex.split(COMMANDS["verify"].replace("before-backup", "after-backup")),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rolled.returncode == 5 and "rolled back" in rolled.stderr, rolled.stderr

        _the_operator_refuses_to_restore_over_a_log(k8s, backup_path, tmp_path)
    finally:  # best effort, never waiting: the cluster is torn down after the session
        try:
            k8s.kubectl("delete", "namespace", NS, "--wait=false", check=False, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        figures = ", ".join(f"{k}: {v:.2f}" for k, v in FIGURES.items())
        print(f"\nbackup figures: {figures}")
        out = REPO / ".state" / "backup-figures.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(FIGURES, indent=2) + "\n")


def _tree_size_in_postgres(k8s: Target) -> int:
    out = k8s.kubectl(
        "exec",
        f"{NET}-postgres-0",
        "-n",
        NS,
        "--",
        "psql",
        "-U",
        "beco",
        "-d",
        "beco",
        "-XtAc",
        "select max(tree_size) from tree_heads",
    )
    return int(out.strip())


def _the_operator_refuses_to_restore_over_a_log(k8s: Target, dump: str, d: Path) -> None:
    """A network created with spec.restore whose database already holds a log (here: the
    previous network deleted with --cascade=orphan, its Postgres and volume left running)."""
    size = _tree_size_in_postgres(k8s)
    k8s.kubectl("delete", "beconetwork", NET, "-n", NS, "--cascade=orphan", "--wait=true")
    manifest = yaml.safe_load((REPO / "examples" / "ledger.yaml").read_text())
    manifest["spec"]["restore"] = {"pvc": PVC, "path": dump}
    (d / "over-a-log.yaml").write_text(yaml.safe_dump(manifest))
    k8s.kubectl("create", "-f", str(d / "over-a-log.yaml"), "-n", NS)

    def restored() -> dict[str, str]:
        net = json.loads(k8s.kubectl("get", "beconetwork", NET, "-n", NS, "-o", "json"))
        conds = (net.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "Restored"), {})

    _wait(lambda: restored().get("reason") not in (None, "Restoring"), 240, "the restore's end")
    cond = restored()
    assert (cond["status"], cond["reason"]) == ("False", "LogNotEmpty"), cond
    assert f"already holds a log of {size} leaves" in cond["message"], cond
    sst = json.loads(k8s.kubectl("get", "statefulset", f"{NET}-sst", "-n", NS, "-o", "json"))
    assert sst["spec"]["replicas"] == 0  # the SST is held; the log is untouched
    assert _tree_size_in_postgres(k8s) == size
