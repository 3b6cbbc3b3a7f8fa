"""Backup and restore: names, Jobs, the restore gate and the rewind check (pure), and the
reconcile of a network with spec.restore against the in-memory API: the SST stays at zero
replicas until the restore Job succeeded, then signs with the backup's key."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml
from beco_node import keys
from beco_operator import backup, names, render
from beco_operator.config import OperatorConfig
from beco_operator.kube import path
from beco_operator.names import Obj
from beco_operator.reconcile import Reconciler
from beco_operator.spec import SpecError, parse

from .test_crd import CRD
from .test_reconcile import CAPS, NS, Clock, FakeKube

STAMP = "20261130T080000Z"
DUMP = f"demo/{STAMP}.dump"


def test_the_doc_shows_exactly_the_commands_the_e2e_test_runs() -> None:
    from e2e.kubernetes.test_backup import COMMANDS, doc_commands

    assert doc_commands() == list(COMMANDS.values())


def test_names_and_paths_round_trip() -> None:
    assert backup.dump_path("demo", STAMP) == DUMP
    assert backup.parse_path(DUMP) == ("demo", STAMP)
    assert backup.meta_path(DUMP) == f"demo/{STAMP}.json"
    assert backup.key_secret_of(DUMP) == "demo-backup-20261130t080000z-sst"
    for bad in ("demo.dump", "../x/20261130T080000Z.dump", "Demo/20261130T080000Z.dump", ""):
        with pytest.raises(ValueError, match="is not <network>/"):
            backup.parse_path(bad)


def test_the_crd_pattern_is_the_operators() -> None:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["restore"]["properties"]["path"]["pattern"] == backup.PATH_PATTERN
    rules = " ".join(r["rule"] for r in spec["x-kubernetes-validations"])
    assert "self.restore == oldSelf.restore" in rules  # set at creation only


def test_spec_restore_parses_and_rejects_with_a_reason() -> None:
    base: dict[str, Any] = {"zones": ["a"]}
    assert parse(base).restore is None
    got = parse({**base, "restore": {"pvc": "backups", "path": DUMP}}).restore
    assert got is not None
    assert (got.pvc, got.path, got.key_secret) == ("backups", DUMP, backup.key_secret_of(DUMP))
    with pytest.raises(SpecError, match=r"spec\.restore\.path: backup path"):
        parse({**base, "restore": {"pvc": "b", "path": "x.dump"}})
    with pytest.raises(SpecError, match=r"spec\.restore\.pvc"):
        parse({**base, "restore": {"path": DUMP}})
    ext = {**base, "database": {"external": {"secretRef": {"name": "dsn"}}}}
    with pytest.raises(SpecError, match="needs a managed database"):
        parse({**ext, "restore": {"pvc": "b", "path": DUMP}})


def test_jobs_mount_the_claim_and_never_carry_a_secret_value() -> None:
    owner = render.owner_reference("demo", "uid")
    job = backup.restore_job("demo", NS, "backups", DUMP, "postgres:15", "v1", owner)
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert job["spec"]["backoffLimit"] == 0 and job["metadata"]["ownerReferences"] == [owner]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "backups"
    assert c["volumeMounts"][0]["readOnly"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "demo-postgres",
        "key": "password",
    }
    assert env["BECO_RESTORE_PATH"]["value"] == DUMP
    assert job["spec"]["template"]["metadata"]["labels"][backup.BACKUP_LABEL] == "demo-restore"
    dump = backup.backup_job("demo", NS, STAMP, "backups", "postgres:15", "v1", "{}")
    denv = {
        e["name"]: e.get("value") for e in dump["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert denv["BECO_KEY_SECRET"] == backup.key_secret("demo", STAMP)
    assert "ownerReferences" not in dump["metadata"]  # a backup outlives its network


def test_the_postgres_policy_admits_the_sst_and_the_backup_jobs_only() -> None:
    spec = parse({"zones": ["a"]})
    objs = render.render("demo", NS, "uid", spec, singleton_key_hashes={}, pod_monitor=False)
    (pol,) = [
        o for o in objs if o["metadata"]["name"] == "demo-postgres" and o["kind"] == "NetworkPolicy"
    ]
    allowed = [f["podSelector"]["matchLabels"] for f in pol["spec"]["ingress"][0]["from"]]
    job = backup.restore_job("demo", NS, "b", DUMP, "p", "v", {})
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert any(all(job_labels.get(k) == v for k, v in sel.items()) for sel in allowed)
    assert len(allowed) == 2
    held = render.render(
        "demo", NS, "uid", spec, singleton_key_hashes={}, pod_monitor=False, hold_sst=True
    )
    sts = {o["metadata"]["name"]: o["spec"]["replicas"] for o in held if o["kind"] == "StatefulSet"}
    assert sts["demo-sst"] == 0 and sts["demo-validator"] == 1


def _pod(message: str, code: int) -> Obj:
    term = {"exitCode": code, "message": message}
    return {"status": {"containerStatuses": [{"state": {"terminated": term}}]}}


def test_the_gate() -> None:
    g = backup.gate("b", DUMP, previously_restored=False, key_present=True, job=None)
    assert (g.hold_sst, g.create_job, g.done, g.reason) == (True, True, False, "Restoring")
    g = backup.gate("b", DUMP, previously_restored=False, key_present=False, job=None)
    assert (g.hold_sst, g.create_job, g.reason) == (True, False, "BackupKeyMissing")
    assert backup.key_secret_of(DUMP) in g.message
    running = backup.job_state({"status": {"active": 1}}, [])
    g = backup.gate("b", DUMP, previously_restored=False, key_present=True, job=running)
    assert (g.hold_sst, g.create_job) == (True, False)
    msg = "LogNotEmpty: the database already holds a log of 7 leaves: refusing"
    failed = backup.job_state({"status": {"failed": 1}}, [_pod(msg, 1)])
    g = backup.gate("b", DUMP, previously_restored=False, key_present=True, job=failed)
    assert (g.hold_sst, g.ok, g.reason) == (True, False, "LogNotEmpty")
    assert g.message.startswith("the database already holds a log of 7 leaves")
    odd = backup.job_state(
        {
            "status": {
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "too slow",
                    }
                ]
            }
        },
        [],
    )
    g = backup.gate("b", DUMP, previously_restored=False, key_present=True, job=odd)
    assert (g.reason, g.message) == ("RestoreFailed", "DeadlineExceeded: too slow")
    done = backup.job_state(
        {"status": {"succeeded": 1}}, [_pod("Restored: x: a log of 9 leaves", 0)]
    )
    g = backup.gate("b", DUMP, previously_restored=False, key_present=False, job=done)
    assert (g.hold_sst, g.done, g.ok, g.message) == (False, True, True, "x: a log of 9 leaves")
    g = backup.gate("b", DUMP, previously_restored=True, key_present=False, job=None)
    assert (g.hold_sst, g.create_job, g.done) == (False, False, True)


def test_rewind_check() -> None:
    assert backup.rewind_check(10, "aa", 10, "AA").ok
    assert backup.rewind_check(12, "aa", 10, "bb").ok  # longer: the proof comes after
    older = backup.rewind_check(8, "aa", 10, "bb")
    assert not older.ok and "rewind 2 changes" in older.message
    fork = backup.rewind_check(10, "aa", 10, "bb")
    assert not fork.ok and "fork" in fork.message


# ---- the reconcile ------------------------------------------------------------------------


def _network() -> Obj:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "demo", "namespace": NS, "uid": "net-uid", "generation": 1},
        "spec": {"zones": ["a", "b", "c"], "restore": {"pvc": "backups", "path": DUMP}},
    }


async def _round(r: Reconciler, kube: FakeKube) -> Obj:
    body = await kube.get(path(names.KIND, NS, "demo"))
    assert body is not None
    await r.reconcile(body, CAPS)
    got = await kube.get(path(names.KIND, NS, "demo"))
    assert got is not None
    return got


def _cond(net: Obj, ctype: str) -> Obj:
    return next(c for c in net["status"]["conditions"] if c["type"] == ctype)


async def test_restore_holds_the_sst_until_the_job_succeeded_then_uses_the_backup_key() -> None:
    clock = Clock()
    kube = FakeKube(clock)
    r = Reconciler(kube, clock, OperatorConfig())  # type: ignore[arg-type]
    await kube.create(_network())
    pem = keys.private_key_to_pem(keys.generate_private_key())
    await kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": backup.key_secret_of(DUMP), "namespace": NS},
            "data": {names.NODE_KEY: base64.b64encode(pem).decode()},
        }
    )
    for _ in range(2):
        net = await _round(r, kube)
    sst = kube.objs[path("StatefulSet", NS, "demo-sst")]
    assert sst["spec"]["replicas"] == 0
    assert path("Pod", NS, "demo-sst-0") not in kube.objs
    # the SST key is the backup's from the start (the membership is published meanwhile)
    key = kube.objs[path("Secret", NS, "demo-sst-key")]
    assert base64.b64decode(key["data"][names.NODE_KEY]) == pem
    assert path("ConfigMap", NS, "demo-membership") in kube.objs
    cond = _cond(net, backup.RESTORED)
    assert (cond["status"], cond["reason"]) == ("False", "Restoring")
    assert _cond(net, "Ready")["status"] == "False"
    job = kube.objs[path("Job", NS, "demo-restore")]

    # the Job succeeds
    job["status"] = {"succeeded": 1}
    pod = _pod(f"Restored: {DUMP} from backups: a log of 42 leaves", 0)
    pod.update(
        kind="Pod",
        apiVersion="v1",
        metadata={
            "name": "demo-restore-x",
            "namespace": NS,
            "labels": job["spec"]["template"]["metadata"]["labels"],
        },
    )
    kube.objs[path("Pod", NS, "demo-restore-x")] = pod
    for _ in range(3):
        net = await _round(r, kube)
    assert kube.objs[path("StatefulSet", NS, "demo-sst")]["spec"]["replicas"] == 1
    key = kube.objs[path("Secret", NS, "demo-sst-key")]
    assert base64.b64decode(key["data"][names.NODE_KEY]) == pem
    cond = _cond(net, backup.RESTORED)
    assert (cond["status"], cond["reason"]) == ("True", "Restored")
    assert "a log of 42 leaves" in cond["message"]
    assert _cond(net, "Ready")["status"] == "True", net["status"]

    # the Job removed later: the condition remembers, nothing is restored again
    del kube.objs[path("Job", NS, "demo-restore")]
    net = await _round(r, kube)
    assert path("Job", NS, "demo-restore") not in kube.objs
    assert _cond(net, backup.RESTORED)["status"] == "True"


async def test_a_kept_sst_key_is_replaced_only_once_the_restore_succeeded() -> None:
    clock = Clock()
    kube = FakeKube(clock)
    r = Reconciler(kube, clock, OperatorConfig())  # type: ignore[arg-type]
    await kube.create(_network())
    pem = keys.private_key_to_pem(keys.generate_private_key())
    await kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": backup.key_secret_of(DUMP), "namespace": NS},
            "data": {names.NODE_KEY: base64.b64encode(pem).decode()},
        }
    )
    kept = keys.private_key_to_pem(keys.generate_private_key())
    await kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "demo-sst-key",
                "namespace": NS,
                "labels": {
                    **names.labels("demo", names.ROLE_SST, "v"),
                    names.KEY_LABEL: "node",
                },
            },
            "data": {names.NODE_KEY: base64.b64encode(kept).decode()},
        }
    )
    await _round(r, kube)
    key = kube.objs[path("Secret", NS, "demo-sst-key")]
    assert base64.b64decode(key["data"][names.NODE_KEY]) == kept  # may sign a kept log
    job = kube.objs[path("Job", NS, "demo-restore")]
    job["status"] = {"succeeded": 1}
    await _round(r, kube)
    key = kube.objs[path("Secret", NS, "demo-sst-key")]
    assert base64.b64decode(key["data"][names.NODE_KEY]) == pem


async def test_a_refused_restore_keeps_the_sst_down_with_the_reason() -> None:
    clock = Clock()
    kube = FakeKube(clock)
    r = Reconciler(kube, clock, OperatorConfig())  # type: ignore[arg-type]
    await kube.create(_network())
    net = await _round(r, kube)
    cond = _cond(net, backup.RESTORED)
    assert (cond["status"], cond["reason"]) == ("False", "BackupKeyMissing")
    assert path("Job", NS, "demo-restore") not in kube.objs
    assert "restore: the backup's SST key Secret" in _cond(net, "Ready")["message"]


async def test_a_restore_job_left_by_an_earlier_network_is_not_taken_for_this_ones() -> None:
    clock = Clock()
    kube = FakeKube(clock)
    r = Reconciler(kube, clock, OperatorConfig())  # type: ignore[arg-type]
    await kube.create(_network())
    pem = keys.private_key_to_pem(keys.generate_private_key())
    await kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": backup.key_secret_of(DUMP), "namespace": NS},
            "data": {names.NODE_KEY: base64.b64encode(pem).decode()},
        }
    )
    old = backup.restore_job("demo", NS, "b", DUMP, "p", "v", {"uid": "earlier"})
    old["status"] = {"succeeded": 1}
    await kube.create(old)
    net = await _round(r, kube)
    job = kube.objs[path("Job", NS, "demo-restore")]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "net-uid"
    assert "status" not in job
    assert kube.objs[path("StatefulSet", NS, "demo-sst")]["spec"]["replicas"] == 0
    assert _cond(net, backup.RESTORED)["reason"] == "Restoring"


def test_jobs_reach_postgres_where_the_sst_does() -> None:
    """The Jobs' PGHOST is the host of the DSN the SST is given (the cluster-IP Service),
    not a second copy that could drift back to the headless one."""
    secret = render.postgres_secret("demo", NS, "v1", "pw")
    dsn = base64.b64decode(secret["data"]["dsn"]).decode()
    owner = render.owner_reference("demo", "uid")
    jobs = [
        backup.restore_job("demo", NS, "backups", DUMP, "postgres:15", "v1", owner),
        backup.backup_job("demo", NS, STAMP, "backups", "postgres:15", "v1", "{}"),
    ]
    for job in jobs:
        env = {
            e["name"]: e.get("value")
            for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert f"@{env['PGHOST']}:{env['PGPORT']}/" in dsn
