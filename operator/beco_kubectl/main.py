"""``kubectl-beco``: the entry point (see ``kubectl beco --help``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from beco_node import keys
from beco_operator import backup, names
from beco_operator.spec import ManagedDatabase, SpecError
from beco_operator.spec import parse as parse_spec

from beco_kubectl import args as cli
from beco_kubectl import summary
from beco_kubectl.cluster import Cluster, ClusterError, NotFound, Obj
from beco_kubectl.forward import (
    ForwardError,
    ForwardTimeout,
    client_files,
    port_forward,
    run_beco,
    service_port,
    session_args,
)

HEAD_TIMEOUT = 15.0  # seconds for beco to answer through the port-forward in `status`


class Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _emit(ns: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if ns.output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    elif ns.output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(text)


def _write_key(d: Path) -> str:
    path = d / "plugin.key"
    path.write_bytes(keys.private_key_to_pem(keys.generate_private_key()))
    path.chmod(0o600)
    return str(path)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def read_head(cluster: Cluster, net: dict[str, Any], timeout: float) -> summary.Head:
    """The latest signed tree head through a port-forward, verified with the membership's key."""
    name = str(net["metadata"]["name"])
    try:
        with (
            client_files(cluster, net) as (d, files),
            port_forward(cluster, names.client_service(name), service_port(net), timeout) as port,
        ):
            args = session_args(port, files, [])
            args += ["--output", "json", "--timeout", str(HEAD_TIMEOUT), "--key", _write_key(d)]
            out = run_beco([*args, "tree", "head"], capture=True, timeout=HEAD_TIMEOUT + 10)
            if out.returncode != 0:
                return summary.Head(error=_last_line(out.stderr))
            return cli.parse_head(out.stdout)
    except (ClusterError, ForwardError, ValueError) as exc:
        return summary.Head(error=str(exc))
    except subprocess.TimeoutExpired:
        return summary.Head(error="beco did not answer in time")


def status(cluster: Cluster, ns: argparse.Namespace) -> int:
    net = cluster.network(ns.name)
    s = summary.summarize(net, cluster.pods(ns.name), cluster.key_secrets(ns.name))
    head = None if ns.no_head else read_head(cluster, net, ns.request_timeout)
    now_ms = int(time.time() * 1000)
    _emit(ns, summary.to_dict(s, head, now_ms), summary.render_text(s, head, now_ms))
    return cli.OK


def _rotation(cluster: Cluster, name: str) -> summary.Summary:
    return summary.summarize(cluster.network(name), [], cluster.key_secrets(name))


def rotate_keys(cluster: Cluster, ns: argparse.Namespace) -> int:
    token = ns.token or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    cluster.network(ns.name)  # a clear "not found" before the patch
    cluster.annotate_network(ns.name, {names.ROTATE_KEYS_ANNOTATION: token})
    print(f"key rotation {token!r} requested for {cluster.namespace}/{ns.name}", file=sys.stderr)
    result: dict[str, Any] = {"token": token, "waited": bool(ns.wait)}
    if ns.wait:
        deadline = time.monotonic() + ns.timeout
        while True:
            s = _rotation(cluster, ns.name)
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in s.conditions)
            rot = s.rotation
            if rot is not None and not rot.in_progress and ready:
                result.update(done=rot.done, total=rot.total, phase=s.phase)
                break
            if time.monotonic() > deadline:
                done = f"{rot.done}/{rot.total} keys" if rot else "no progress"
                raise Failure(
                    cli.TIMEOUT,
                    f"rotation {token!r} not finished after {ns.timeout:.0f}s ({done}, phase "
                    f"{s.phase}); see `kubectl beco status {ns.name}`",
                )
            time.sleep(2)
    text = f"rotation {token!r}: " + (
        f"done, {result['done']}/{result['total']} keys, network {result['phase']}"
        if ns.wait
        else "requested; the operator rotates one member at a time (see `kubectl beco status`)"
    )
    _emit(ns, result, text)
    return cli.OK


def restart(cluster: Cluster, ns: argparse.Namespace) -> int:
    roles = list(names.RESTART_ROLES) if ns.role == "all" else [ns.role]
    token = ns.token or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    cluster.network(ns.name)  # a clear "not found" before the patch
    cluster.annotate_network(ns.name, {names.restart_annotation(r): token for r in roles})
    print(
        f"restart {token!r} of {', '.join(roles)} requested for {cluster.namespace}/{ns.name}",
        file=sys.stderr,
    )
    result: dict[str, Any] = {"token": token, "roles": roles, "waited": bool(ns.wait)}
    if ns.wait:
        deadline = time.monotonic() + ns.timeout
        while True:
            net = cluster.network(ns.name)
            states = summary.restart_states(net, token, roles)
            conds = (net.get("status") or {}).get("conditions") or []
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
            phase = str((net.get("status") or {}).get("phase") or "Pending")
            if all(v == "Done" for v in states.values()) and ready:
                result.update(states=states, phase=phase)
                break
            if time.monotonic() > deadline:
                left = ", ".join(f"{r} {v}" for r, v in states.items())
                raise Failure(
                    cli.TIMEOUT,
                    f"restart {token!r} not finished after {ns.timeout:.0f}s ({left}; phase "
                    f"{phase}); see `kubectl beco status {ns.name}`",
                )
            time.sleep(2)
    text = f"restart {token!r} of {', '.join(roles)}: " + (
        f"done, network {result['phase']}"
        if ns.wait
        else "requested; the operator restarts one pod at a time (see `kubectl beco status`)"
    )
    _emit(ns, result, text)
    return cli.OK


def connect(cluster: Cluster, ns: argparse.Namespace, beco_user_args: Sequence[str]) -> int:
    net = cluster.network(ns.name)
    with (
        client_files(cluster, net) as (_, files),
        port_forward(
            cluster, names.client_service(ns.name), service_port(net), ns.request_timeout
        ) as port,
    ):
        return run_beco(session_args(port, files, beco_user_args), capture=False).returncode


def verify_log(cluster: Cluster, ns: argparse.Namespace) -> int:
    try:
        old = cli.parse_head(Path(ns.old_head).read_text())
    except (OSError, ValueError) as exc:
        raise Failure(cli.ERROR, f"cannot read the saved head {ns.old_head}: {exc}") from None
    net = cluster.network(ns.name)
    with (
        client_files(cluster, net) as (d, files),
        port_forward(
            cluster, names.client_service(ns.name), service_port(net), ns.request_timeout
        ) as port,
    ):
        base = session_args(port, files, [])
        base += ["--output", "json", "--key", ns.key or _write_key(d)]
        new_file = d / "new-head.json"
        out = run_beco([*base, "tree", "head", "--save", str(new_file)], capture=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            return out.returncode
        new_text = new_file.read_text()
        new = cli.parse_head(new_text)
        if ns.save:
            Path(ns.save).write_text(new_text)
        proof_rc: int | None = None
        proof_err = ""
        if new.tree_size >= old.tree_size:
            proof = run_beco(
                [*base, "proof", "consistency", "--old-head", ns.old_head], capture=True
            )
            proof_rc, proof_err = proof.returncode, proof.stderr
        code, message = cli.log_verdict(old, new, proof_rc, proof_err)
        if code != cli.OK:
            raise Failure(code, message)
        report = {"old_size": old.tree_size, "new_size": new.tree_size, "consistent": True}
        _emit(ns, report, message)
        return cli.OK


def _wait_job(cluster: Cluster, name: str, timeout: float) -> tuple[backup.JobState, str]:
    """Wait for a Job to finish: (its state, the log of its pod)."""
    deadline = time.monotonic() + timeout
    while True:
        job = cluster.job(name)
        if job is None:
            raise Failure(cli.ERROR, f"Job {cluster.namespace}/{name} disappeared")
        pods = cluster.job_pods(name)
        state = backup.job_state(job, pods)
        if state.succeeded or state.failed:
            logs = cluster.pod_log(str(pods[-1]["metadata"]["name"])) if pods else ""
            return state, logs
        if time.monotonic() > deadline:
            raise Failure(
                cli.TIMEOUT,
                f"Job {cluster.namespace}/{name} not finished after {timeout:.0f}s; "
                f"see `kubectl describe job {name}`",
            )
        time.sleep(1)


def _last_json(logs: str) -> dict[str, Any]:
    for line in reversed(logs.strip().splitlines()):
        if line.startswith("{"):
            try:
                got: dict[str, Any] = json.loads(line)
                return got
            except ValueError:
                break
    raise Failure(cli.ERROR, f"no backup metadata in the Job's output: {_last_line(logs)}")


def do_backup(cluster: Cluster, ns: argparse.Namespace) -> int:
    net = cluster.network(ns.name)
    try:
        spec = parse_spec(net.get("spec") or {})
    except SpecError as exc:
        raise Failure(cli.ERROR, f"the network's spec is not valid: {exc}") from None
    if not isinstance(spec.database, ManagedDatabase):
        raise Failure(
            cli.ERROR,
            f"{ns.name} uses an external database: back it up with that database's own tools "
            "(and keep the SST key Secret with it)",
        )
    ts = backup.stamp(datetime.now(UTC))
    sst_key_name = names.key_secret(names.singleton(ns.name, names.ROLE_SST))
    sst_key = cluster.secret(sst_key_name)
    if sst_key is None:
        raise Failure(cli.ERROR, f"the SST key Secret {sst_key_name} does not exist yet")
    if cluster.pvc(ns.pvc) is None:
        cluster.create(backup.pvc(ns.pvc, cluster.namespace, ns.size))
        print(f"created PersistentVolumeClaim {ns.pvc} ({ns.size})", file=sys.stderr)
    cluster.create(backup.key_copy(ns.name, cluster.namespace, ts, ns.pvc, sst_key, spec.image_tag))
    spec_json = json.dumps(net.get("spec") or {}, sort_keys=True, separators=(",", ":"))
    job = backup.backup_job(
        ns.name, cluster.namespace, ts, ns.pvc, spec.database.image, spec.image_tag, spec_json
    )
    started = time.monotonic()
    cluster.create(job)
    result: dict[str, Any] = {
        "network": ns.name,
        "pvc": ns.pvc,
        "path": backup.dump_path(ns.name, ts),
        "keySecret": backup.key_secret(ns.name, ts),
        "job": job["metadata"]["name"],
    }
    if not ns.wait:
        _emit(
            ns,
            result,
            f"backup {result['path']} started (Job {result['job']}); the SST key is kept in "
            f"Secret {result['keySecret']}",
        )
        return cli.OK
    state, logs = _wait_job(cluster, result["job"], ns.timeout)
    if not state.succeeded:
        raise Failure(cli.ERROR, f"backup Job {result['job']} failed: {state.message}")
    meta = _last_json(logs)
    meta.pop("spec", None)
    result.update(meta)
    result["seconds"] = round(time.monotonic() - started, 2)
    _emit(
        ns,
        result,
        f"backup {result['path']} in {ns.pvc}: {meta['dump_bytes']} bytes, tree size "
        f"{meta['tree_size']}, pg_dump {meta['dump_ms'] / 1000:.2f}s, Job {result['seconds']}s; "
        f"SST key in Secret {result['keySecret']}",
    )
    return cli.OK


def read_backup_meta(cluster: Cluster, pvc: str, dump: str, image: str, timeout: float) -> Obj:
    """The metadata file of a backup, read from the claim by a short Job."""
    if cluster.pvc(pvc) is None:
        raise NotFound(f"PersistentVolumeClaim {cluster.namespace}/{pvc} not found")
    name = f"beco-inspect-{int(time.time() * 1000) % 10**10}"
    cluster.create(backup.inspect_job(name, cluster.namespace, pvc, dump, image))
    try:
        state, logs = _wait_job(cluster, name, timeout)
    finally:
        cluster.delete_job(name)
    if not state.succeeded:
        raise Failure(
            cli.ERROR, f"cannot read {backup.meta_path(dump)} in {pvc}: {_last_line(logs)}"
        )
    return _last_json(logs)


def _seen_head(
    cluster: Cluster, live: Obj | None, saved: str, timeout: float
) -> tuple[summary.Head | None, str]:
    """The largest head known: the live network's and a saved one; (head, where from)."""
    heads: list[tuple[summary.Head, str]] = []
    if saved:
        try:
            heads.append((cli.parse_head(Path(saved).read_text()), saved))
        except (OSError, ValueError) as exc:
            raise Failure(cli.ERROR, f"cannot read the saved head {saved}: {exc}") from None
    if live is not None:
        head = read_head(cluster, live, timeout)
        if head.error:
            print(f"kubectl beco: cannot read the live head: {head.error}", file=sys.stderr)
        else:
            heads.append((head, f"the live network {cluster.namespace}/{live['metadata']['name']}"))
    if not heads:
        return None, ""
    return max(heads, key=lambda h: h[0].tree_size)


def do_restore(cluster: Cluster, ns: argparse.Namespace) -> int:
    try:
        backup.parse_path(ns.path)
    except ValueError as exc:
        raise Failure(cli.USAGE, str(exc)) from None
    meta = read_backup_meta(cluster, ns.from_pvc, ns.path, ns.image, ns.request_timeout + 120)
    live = cluster.network_or_none(ns.name)
    seen, where = _seen_head(cluster, live, ns.latest_head, ns.request_timeout)
    size = int(meta["tree_size"])
    if seen is not None:
        verdict = backup.rewind_check(
            size, str(meta["root_hash_hex"]), seen.tree_size, seen.root_hash
        )
        if not verdict.ok and not ns.allow_rewind:
            raise Failure(
                cli.REWIND,
                f"refused: {verdict.message} ({where}); --allow-rewind restores it anyway",
            )
        print(f"kubectl beco: {verdict.message} ({where})", file=sys.stderr)
    if live is not None:
        raise Failure(
            cli.ERROR,
            f"BecoNetwork {cluster.namespace}/{ns.name} exists: a restore creates the network; "
            "delete it first (or restore under another name)",
        )
    claim = f"data-{names.postgres(ns.name)}-0"
    if cluster.pvc(claim) is not None:
        raise Failure(
            cli.ERROR,
            f"the data volume claim {claim} of an earlier {ns.name} still exists: the operator "
            "never restores over a log; delete the claim (after a backup) or restore under "
            "another name",
        )
    key_name = str(meta.get("key_secret") or backup.key_secret_of(ns.path))
    if cluster.secret(key_name) is None:
        raise Failure(
            cli.ERROR,
            f"the backup's SST key Secret {cluster.namespace}/{key_name} does not exist: the "
            "restored log cannot be served without the key that signed it",
        )
    spec = dict(meta.get("spec") or {})
    spec["restore"] = {"pvc": ns.from_pvc, "path": ns.path}
    if key_name != backup.key_secret_of(ns.path):
        spec["restore"]["keySecret"] = key_name
    body: Obj = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": ns.name, "namespace": cluster.namespace},
        "spec": spec,
    }
    started = time.monotonic()
    cluster.create(body)
    result: dict[str, Any] = {
        "network": ns.name,
        "path": ns.path,
        "pvc": ns.from_pvc,
        "tree_size": size,
        "root_hash_hex": meta["root_hash_hex"],
        "waited": bool(ns.wait),
    }
    if ns.wait:
        result["seconds"] = _wait_restored(cluster, ns.name, ns.timeout, started)
    text = f"restoring {ns.path} (tree size {size}) into {cluster.namespace}/{ns.name}" + (
        f": Ready after {result['seconds']}s" if ns.wait else "; see `kubectl beco status`"
    )
    _emit(ns, result, text)
    return cli.OK


def _wait_restored(cluster: Cluster, name: str, timeout: float, started: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        conds = {
            c.get("type"): c
            for c in (cluster.network(name).get("status") or {}).get("conditions") or []
        }
        restored = conds.get(backup.RESTORED) or {}
        if restored.get("status") == "False" and restored.get("reason") != backup.REASON_RUNNING:
            raise Failure(
                cli.ERROR, f"restore failed: {restored.get('reason')}: {restored.get('message')}"
            )
        ready = conds.get("Ready") or {}
        if restored.get("status") == "True" and ready.get("status") == "True":
            return round(time.monotonic() - started, 2)
        if time.monotonic() > deadline:
            raise Failure(
                cli.TIMEOUT,
                f"{name} not Ready after {timeout:.0f}s: {ready.get('message', 'no status yet')}",
            )
        time.sleep(2)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        inv = cli.parse(sys.argv[1:] if argv is None else argv)
    except cli.UsageError as exc:
        print(exc, file=sys.stderr)
        return cli.USAGE
    ns = inv.ns
    try:
        cluster = Cluster(ns.kubeconfig, ns.context, ns.namespace, ns.request_timeout)
        if ns.cmd == "status":
            return status(cluster, ns)
        if ns.cmd == "rotate-keys":
            return rotate_keys(cluster, ns)
        if ns.cmd == "restart":
            return restart(cluster, ns)
        if ns.cmd == "connect":
            return connect(cluster, ns, inv.beco_args)
        if ns.cmd == "backup":
            return do_backup(cluster, ns)
        if ns.cmd == "restore":
            return do_restore(cluster, ns)
        return verify_log(cluster, ns)
    except NotFound as exc:
        print(f"kubectl beco: {exc}", file=sys.stderr)
        return cli.NOT_FOUND
    except Failure as exc:
        print(f"kubectl beco: {exc}", file=sys.stderr)
        return exc.code
    except ForwardError as exc:
        print(f"kubectl beco: {exc}", file=sys.stderr)
        return cli.TIMEOUT if isinstance(exc, ForwardTimeout) else cli.ERROR
    except ClusterError as exc:
        print(f"kubectl beco: {exc}", file=sys.stderr)
        return cli.ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
