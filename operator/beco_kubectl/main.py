"""``kubectl-beco``: the entry point (see ``kubectl beco --help``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from beco_node import keys
from beco_operator import names

from beco_kubectl import args as cli
from beco_kubectl import summary
from beco_kubectl.cluster import Cluster, ClusterError, NotFound
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
