"""Backup and restore of a managed SST database: names, the Jobs, the restore gate. Pure.

A backup is ``pg_dump --format=custom`` of the network's Postgres, run by a Job from the
Postgres image into a volume claim the user names, as ``<network>/<stamp>.dump`` next to
``<stamp>.json`` (network, time, size, duration and the latest signed tree head *in the
dump*, read back from the dump itself). pg_dump reads one repeatable-read snapshot, and
``beco_commit_batch`` writes a batch's states, changes, leaves and tree head in one transaction,
so a dump taken under writes holds whole batches only. The SST's log key, which signed every head in the
dump, is copied into a Secret of its own (:func:`key_secret`), not owned by the network.

A restore is a BecoNetwork created with ``spec.restore``: the operator keeps the SST at zero
replicas, runs :func:`restore_job` (``pg_restore`` in one transaction, refused when the
database already holds a log) and starts the SST with the backup's key once it succeeded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from beco_operator import names
from beco_operator.names import Obj

ROLE = "backup"  # component of backup and restore pods (the Postgres NetworkPolicy admits it)
MOUNT = "/backup"
RESTORED = "Restored"  # the condition type
PG_USER = "beco"  # as render.PG_USER (render imports this module)
PG_DB = "beco"
PATH_ANNOTATION = f"{names.GROUP}/backup-path"
PVC_ANNOTATION = f"{names.GROUP}/backup-pvc"
BACKUP_LABEL = f"{names.GROUP}/backup"

_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_STAMP = r"[0-9]{8}T[0-9]{6}Z"
PATH_PATTERN = rf"^{_NAME}/{_STAMP}\.dump$"  # the CRD's spec.restore.path pattern
_PATH = re.compile(PATH_PATTERN)

# Reasons of the Restored condition (the restore Job writes its failure reason first).
REASON_DONE = "Restored"
REASON_RUNNING = "Restoring"
REASON_KEY_MISSING = "BackupKeyMissing"
REASON_FAILED = "RestoreFailed"
JOB_REASONS = ("LogNotEmpty", "BackupNotFound", "RestoreError")


def stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ")


def dump_path(network: str, ts: str) -> str:
    return f"{network}/{ts}.dump"


def meta_path(dump: str) -> str:
    return dump.removesuffix(".dump") + ".json"


def parse_path(path: str) -> tuple[str, str]:
    """``<network>/<stamp>.dump`` -> (network, stamp); ValueError says what is wrong."""
    if not _PATH.match(path):
        raise ValueError(
            f"backup path {path!r} is not <network>/<YYYYMMDDTHHMMSSZ>.dump "
            "(as `kubectl beco backup` writes it)"
        )
    network, _, rest = path.partition("/")
    return network, rest.removesuffix(".dump")


def key_secret(network: str, ts: str) -> str:
    """The Secret holding the SST key of backup ``ts`` of ``network``."""
    return f"{network}-backup-{ts.lower()}-sst"


def key_secret_of(path: str) -> str:
    return key_secret(*parse_path(path))


def job_name(network: str, ts: str) -> str:
    return f"{network}-backup-{ts.lower()}"


def restore_job_name(network: str) -> str:
    return f"{network}-restore"


def pod_labels(network: str, version: str, job: str) -> dict[str, str]:
    labels = names.labels(network, ROLE, version)
    labels[BACKUP_LABEL] = job
    return labels


def _pg_env(network: str, namespace: str) -> list[Obj]:
    return [
        # The cluster-IP Service, as the SST's DSN: its address survives a pod replacement.
        {"name": "PGHOST", "value": names.service_host(names.postgres_service(network), namespace)},
        {"name": "PGPORT", "value": str(names.PG_PORT)},
        {"name": "PGUSER", "value": PG_USER},
        {"name": "PGDATABASE", "value": PG_DB},
        {
            "name": "PGPASSWORD",
            "valueFrom": {"secretKeyRef": {"name": names.postgres(network), "key": "password"}},
        },
        {"name": "HOME", "value": "/tmp"},
    ]


# The head in the dump: the data of tree_heads as pg_restore prints it (COPY text: tab
# separated, bytea as \\x<hex>), the row of the largest tree_size.
BACKUP_SCRIPT = r"""set -eu
dir="$BACKUP_DIR/$BECO_NETWORK"
mkdir -p "$dir"
out="$dir/$BECO_STAMP.dump"
tmp="$out.partial"
until pg_isready -q; do echo "waiting for $PGHOST"; sleep 2; done
t0=$(date +%s%3N)
pg_dump --format=custom --no-owner --file="$tmp"
t1=$(date +%s%3N)
size=$(stat -c %s "$tmp")
head=$(pg_restore --data-only --table=tree_heads --file=- "$tmp" | awk -F '\t' '
  /^COPY / { on = 1; next }
  $0 == "\\." { on = 0 }
  on && (best == "" || $1 + 0 > best + 0) { best = $1; root = $2; ts = $3; sig = $4 }
  # numbers printed as the digits read: the %d of mawk is 32-bit
  END {
    sub(/^\\\\x/, "", root); sub(/^\\\\x/, "", sig)
    printf "\"tree_size\":%s,\"root_hash_hex\":\"%s\",\"timestamp_ms\":%s,\"signature_hex\":\"%s\"", best, root, ts, sig
  }')
mv "$tmp" "$out"
meta="$dir/$BECO_STAMP.json"
printf '{"network":"%s","namespace":"%s","stamp":"%s","path":"%s","key_secret":"%s","dump_bytes":%d,"dump_ms":%d,%s,"spec":%s}\n' \
  "$BECO_NETWORK" "$BECO_NAMESPACE" "$BECO_STAMP" "$BECO_NETWORK/$BECO_STAMP.dump" \
  "$BECO_KEY_SECRET" "$size" "$((t1 - t0))" "$head" "$BECO_SPEC" > "$meta.partial"
mv "$meta.partial" "$meta"
cat "$meta"
"""

# Refuses a database that already holds a log (restoring over it would rewind or fork what
# clients hold proofs for); pg_restore runs in one transaction: all of the dump or nothing.
RESTORE_SCRIPT = r"""set -eu
log="${TERMINATION_LOG:-/dev/termination-log}"
fail() { printf '%s: %s\n' "$1" "$2" > "$log"; echo "$1: $2" >&2; exit 1; }
f="$BACKUP_DIR/$BECO_RESTORE_PATH"
[ -s "$f" ] || fail BackupNotFound "no backup $BECO_RESTORE_PATH in the volume claim $BECO_RESTORE_PVC"
until pg_isready -q; do echo "waiting for $PGHOST"; sleep 2; done
if [ "$(psql -XtAc "select to_regclass('public.leaves') is not null")" = t ]; then
  n=$(psql -XtAc "select count(*) from leaves")
  if [ "$n" != 0 ]; then
    fail LogNotEmpty "the database already holds a log of $n leaves: refusing to restore $BECO_RESTORE_PATH over it (it would rewind or fork the log); restore into a new network or a fresh volume"
  fi
fi
pg_restore --clean --if-exists --no-owner --no-privileges --exit-on-error --single-transaction \
  --dbname="$PGDATABASE" "$f" || fail RestoreError "pg_restore of $BECO_RESTORE_PATH failed; see the Job's log"
size=$(psql -XtAc "select max(tree_size) from tree_heads")
printf 'Restored: %s from %s: a log of %s leaves\n' "$BECO_RESTORE_PATH" "$BECO_RESTORE_PVC" "$size" > "$log"
cat "$log"

"""


def _job(
    name: str,
    network: str,
    namespace: str,
    image: str,
    version: str,
    pvc: str,
    script: str,
    env: Sequence[Obj],
    *,
    read_only: bool,
) -> Obj:
    labels = pod_labels(network, version, name)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,  # a failure is reported, not retried over a half-written state
            "activeDeadlineSeconds": 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": names.postgres_pod_security(),
                    "containers": [
                        {
                            "name": ROLE,
                            "image": image,
                            "command": ["/bin/sh", "-c", script],
                            "env": [
                                *_pg_env(network, namespace),
                                {"name": "BACKUP_DIR", "value": MOUNT},
                                *env,
                            ],
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "backup", "mountPath": MOUNT, "readOnly": read_only},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "backup", "persistentVolumeClaim": {"claimName": pvc}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def backup_job(
    network: str,
    namespace: str,
    ts: str,
    pvc: str,
    image: str,
    version: str,
    spec_json: str,
) -> Obj:
    """The Job that dumps ``network``'s database into ``pvc`` (``spec_json``: the network's
    spec, kept in the metadata so that a restore can re-create it)."""
    env = [
        {"name": "BECO_NETWORK", "value": network},
        {"name": "BECO_NAMESPACE", "value": namespace},
        {"name": "BECO_STAMP", "value": ts},
        {"name": "BECO_KEY_SECRET", "value": key_secret(network, ts)},
        {"name": "BECO_SPEC", "value": spec_json},
    ]
    job = _job(
        job_name(network, ts),
        network,
        namespace,
        image,
        version,
        pvc,
        BACKUP_SCRIPT,
        env,
        read_only=False,
    )
    job["spec"]["ttlSecondsAfterFinished"] = 7 * 24 * 3600
    return job


def restore_job(
    network: str, namespace: str, pvc: str, path: str, image: str, version: str, owner: Obj
) -> Obj:
    env = [
        {"name": "BECO_RESTORE_PATH", "value": path},
        {"name": "BECO_RESTORE_PVC", "value": pvc},
    ]
    job = _job(
        restore_job_name(network),
        network,
        namespace,
        image,
        version,
        pvc,
        RESTORE_SCRIPT,
        env,
        read_only=True,
    )
    job["metadata"]["ownerReferences"] = [owner]
    return job


def inspect_job(name: str, namespace: str, pvc: str, path: str, image: str) -> Obj:
    """A Job that prints a backup's metadata file (the plugin reads it before a restore)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": {BACKUP_LABEL: name}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": {BACKUP_LABEL: name}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": names.POSTGRES_UID,
                        "runAsGroup": names.POSTGRES_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "inspect",
                            "image": image,
                            "command": ["cat", f"{MOUNT}/{meta_path(path)}"],
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "backup", "mountPath": MOUNT, "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [{"name": "backup", "persistentVolumeClaim": {"claimName": pvc}}],
                },
            },
        },
    }


def key_copy(
    network: str, namespace: str, ts: str, pvc: str, sst_key: Mapping[str, Any], version: str
) -> Obj:
    """The backup's copy of the SST's log key (not owned: it outlives the network)."""
    data = sst_key.get("data") or {}
    labels = names.labels(network, ROLE, version)
    labels[BACKUP_LABEL] = job_name(network, ts)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": key_secret(network, ts),
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                PATH_ANNOTATION: dump_path(network, ts),
                PVC_ANNOTATION: pvc,
            },
        },
        "data": {k: data[k] for k in (names.NODE_KEY, "public_key") if k in data},
    }


def pvc(name: str, namespace: str, size: str) -> Obj:
    """A claim for backups, from the cluster's default StorageClass."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


# ---- the restore gate ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobState:
    """A Job as the gate sees it: finished or not, and its pod's termination message."""

    succeeded: bool = False
    failed: bool = False
    message: str = ""


def job_state(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobState:
    st = job.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    succeeded = int(st.get("succeeded") or 0) > 0 or "Complete" in conds
    failed = not succeeded and (int(st.get("failed") or 0) > 0 or "Failed" in conds)
    message = ""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("message"):
                message = str(term["message"]).strip()
    if failed and not message:
        failed_cond = conds.get("Failed") or {}
        message = f"{failed_cond.get('reason', 'Failed')}: {failed_cond.get('message', '')}"
    return JobState(succeeded, failed, message)


@dataclass(frozen=True, slots=True)
class Gate:
    hold_sst: bool  # keep the SST at zero replicas
    create_job: bool
    done: bool  # the database holds the backup: the SST must sign with the backup's key
    ok: bool  # the condition's status
    reason: str
    message: str


def gate(
    pvc: str,
    path: str,
    *,
    previously_restored: bool,
    key_present: bool,
    job: JobState | None,
) -> Gate:
    """What the operator does about ``spec.restore`` now.

    ``previously_restored``: the network's Restored condition is already True (the Job may
    since have been removed); ``key_present``: the backup's SST key Secret exists.
    """
    if job is not None and job.succeeded:
        msg = job.message.removeprefix(f"{REASON_DONE}: ") or f"restored {path} from {pvc}"
        return Gate(False, False, True, True, REASON_DONE, msg)
    if job is None and previously_restored:
        return Gate(False, False, True, True, REASON_DONE, f"restored {path} from {pvc}")
    if job is not None and job.failed:
        reason, sep, rest = job.message.partition(": ")
        if sep and reason in JOB_REASONS:
            return Gate(True, False, False, False, reason, rest)
        return Gate(True, False, False, False, REASON_FAILED, job.message or "the Job failed")
    if job is None and not key_present:
        return Gate(
            True,
            False,
            False,
            False,
            REASON_KEY_MISSING,
            f"the backup's SST key Secret {key_secret_of(path)} does not exist in this "
            "namespace: it signed the log in the backup, which cannot be served without it",
        )
    return Gate(True, job is None, False, False, REASON_RUNNING, f"restoring {path} from {pvc}")


# ---- the rewind check (kubectl beco restore) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    message: str


def rewind_check(
    backup_size: int, backup_root_hex: str, seen_size: int, seen_root_hex: str
) -> Verdict:
    """May a backup whose log has ``backup_size`` leaves replace a log already seen at
    ``seen_size``? Fewer leaves is a rewind; as many with another root is a fork."""
    if backup_size < seen_size:
        return Verdict(
            False,
            f"the backup's log has {backup_size} leaves but a head of {seen_size} leaves was "
            f"already seen: restoring it would rewind {seen_size - backup_size} changes that "
            "clients may hold proofs for",
        )
    if backup_size == seen_size and backup_root_hex.lower() != seen_root_hex.lower():
        return Verdict(
            False,
            f"the backup's head and the head seen both have {seen_size} leaves but different "
            "roots: they are different logs (a fork)",
        )
    return Verdict(
        True,
        f"the backup's log ({backup_size} leaves) is not older than the head seen "
        f"({seen_size} leaves)",
    )
