"""The command line of ``kubectl beco``: parser, exit codes, the ``beco`` argument list. Pure."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

from beco_operator import names
from beco_operator.spec import ManagedDatabase

from beco_kubectl.summary import Head

# Exit codes (documented in --help, README.md and docs/operations.md).
OK = 0
ERROR = 1  # the cluster refused or could not be reached, a local file could not be read, ...
USAGE = 2
NOT_FOUND = 3  # the BecoNetwork (or a child connect needs) does not exist
TIMEOUT = 4  # --wait ran out, or the port-forward never became ready
FORK = 5  # verify-log: the log is NOT an extension of the saved head (fork or rollback)
REWIND = 6  # restore: the backup is older than a head already seen (or forks it)
# connect passes the beco CLI's own exit code through (17 PERMISSION_DENIED, ...).

EXIT_CODES = {
    OK: "success",
    ERROR: "error (Kubernetes API, port-forward or local file)",
    USAGE: "usage error",
    NOT_FOUND: "the BecoNetwork does not exist",
    TIMEOUT: "timed out (--wait, or the port-forward did not come up)",
    FORK: "verify-log: the log does not extend the saved head (fork or rollback)",
    REWIND: "restore: refused, the backup would rewind (or fork) a log already seen",
}

EPILOG = (
    """\
examples:
  kubectl beco status demo -n beco-demo
  kubectl beco status demo -n beco-demo -o json
  kubectl beco rotate-keys demo -n beco-demo --wait --timeout 600
  kubectl beco restart demo -n beco-demo --role user --wait
  kubectl beco restart demo -n beco-demo --wait -o json
  kubectl beco connect demo -n beco-demo -- --key alice.key user get
  kubectl beco connect demo -n beco-demo -- --key alice.key tree head --save head.json
  kubectl beco verify-log demo -n beco-demo --old-head head.json
  kubectl beco backup demo -n beco-demo --pvc beco-backups --wait
  kubectl beco restore demo -n beco-demo --from-pvc beco-backups \\
      --path demo/20261130T080000Z.dump --latest-head head.json --wait

exit codes:
"""
    + "\n".join(f"  {code}  {what}" for code, what in EXIT_CODES.items())
    + """
  connect: the exit code of beco itself (10 + gRPC status when the network refused)

"""
)


class UsageError(Exception):
    pass


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(plugin arguments, beco arguments after the first ``--``)."""
    args = list(argv)
    if "--" in args:
        i = args.index("--")
        return args[:i], args[i + 1 :]
    return args, []


def _globals(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    def d(v: object) -> object:
        return v if defaults else argparse.SUPPRESS

    p.add_argument("-n", "--namespace", default=d(None), help="the network's namespace")
    p.add_argument("--context", default=d(None), help="the kubeconfig context to use")
    p.add_argument("--kubeconfig", default=d(None), help="path to the kubeconfig file")
    p.add_argument(
        "-o", "--output", choices=["text", "json", "yaml"], default=d("text"), help="output format"
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=d(30.0),
        help="seconds for each Kubernetes API request and port-forward start (default 30)",
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _globals(common, defaults=False)
    p = _Parser(
        prog="kubectl beco",
        description=(
            "Operate BecoNetworks: status, key rotation, restarts, a CLI session, log checks, "
            "backup and restore."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _globals(p, defaults=True)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def add(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = sub.add_parser(
            name,
            parents=[common],
            help=help_,
            description=help_,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.add_argument("name", help="the BecoNetwork")
        return sp

    st = add(
        "status",
        "phase, conditions, members per zone, quorum margin, rollout, rotation, tree head",
        "kubectl beco status demo -n beco-demo",
    )
    st.add_argument(
        "--no-head", action="store_true", help="skip reading the tree head (no port-forward)"
    )
    rk = add(
        "rotate-keys",
        "ask the operator to rotate every member's peer key and TLS certificate, one pod at a "
        "time, under the quorum guard; the SST keeps its log signing key (the log's identity: "
        "saved heads and proofs stay verifiable)",
        "kubectl beco rotate-keys demo -n beco-demo --wait",
    )
    rk.add_argument("--token", default="", help="the request token (default: the current time)")
    rk.add_argument("--wait", action="store_true", help="wait until every key is rotated and Ready")
    rk.add_argument("--timeout", type=float, default=900.0, help="seconds for --wait (900)")
    rs = add(
        "restart",
        "ask the operator to restart a role's pods: one at a time, user nodes only while the "
        "others keep the quorum, each role back Ready before the next (--role all: rendezvous, "
        "validator, sst, then user nodes)",
        "kubectl beco restart demo -n beco-demo --role user --wait --timeout 600",
    )
    rs.add_argument(
        "--role",
        choices=[*names.RESTART_ROLES, "all"],
        default="all",
        help="whose pods to restart (default: all)",
    )
    rs.add_argument("--token", default="", help="the request token (default: the current time)")
    rs.add_argument(
        "--wait",
        action="store_true",
        help="wait until every pod restarted and the network is Ready",
    )
    rs.add_argument("--timeout", type=float, default=900.0, help="seconds for --wait (900)")
    add(
        "connect",
        "run the beco CLI against the network through a port-forward: kubectl beco connect "
        "NAME -- <beco args>",
        "kubectl beco connect demo -n beco-demo -- --key alice.key user get",
    )
    vl = add(
        "verify-log",
        "fetch the latest signed tree head and prove it extends a head saved earlier",
        "kubectl beco verify-log demo -n beco-demo --old-head head.json --save new-head.json",
    )
    vl.add_argument("--old-head", required=True, help="a file from `beco tree head --save`")
    vl.add_argument("--save", default="", help="also write the latest verified head here")
    vl.add_argument("--key", default="", help="key file to sign requests (default: a fresh one)")
    bk = add(
        "backup",
        "pg_dump the network's managed database into a volume claim (a Job in its namespace); "
        "the SST's log key is kept in a Secret <network>-backup-<stamp>-sst",
        "kubectl beco backup demo -n beco-demo --pvc beco-backups --wait",
    )
    bk.add_argument("--pvc", required=True, help="the volume claim to write to (created if absent)")
    bk.add_argument(
        "--size", default="1Gi", help="size of the claim when it is created (default 1Gi)"
    )
    bk.add_argument("--wait", action="store_true", help="wait for the dump and print its figures")
    bk.add_argument("--timeout", type=float, default=1800.0, help="seconds for --wait (1800)")
    rs = add(
        "restore",
        "create the BecoNetwork NAME from a backup (spec.restore): refused if the backup is "
        "older than the live network's head or a head saved earlier (--latest-head)",
        "kubectl beco restore demo -n beco-demo --from-pvc beco-backups "
        "--path demo/20261130T080000Z.dump --latest-head head.json --wait",
    )
    rs.add_argument("--from-pvc", required=True, help="the volume claim holding the backup")
    rs.add_argument("--path", required=True, help="the dump in the claim: <network>/<stamp>.dump")
    rs.add_argument(
        "--latest-head",
        default="",
        help="a head saved earlier (beco tree head --save, kubectl beco verify-log --save): "
        "the backup must not be older",
    )
    rs.add_argument(
        "--allow-rewind",
        action="store_true",
        help="restore even if the backup is older than a head already seen (clients holding "
        "proofs of the lost changes will see a rollback)",
    )
    rs.add_argument(
        "--image",
        default=ManagedDatabase().image,
        help="image that reads the backup's metadata from the claim (default: the managed "
        "database's default)",
    )
    rs.add_argument("--wait", action="store_true", help="wait until the network is Ready")
    rs.add_argument("--timeout", type=float, default=900.0, help="seconds for --wait (900)")
    return p


@dataclass(frozen=True, slots=True)
class Invocation:
    ns: argparse.Namespace
    beco_args: list[str]


def parse(argv: Sequence[str]) -> Invocation:
    mine, passthrough = split_passthrough(argv)
    ns = parser().parse_args(mine)
    if passthrough and ns.cmd != "connect":
        raise UsageError(f"kubectl beco {ns.cmd}: unexpected arguments after --")
    if ns.cmd == "connect" and not passthrough:
        raise UsageError("kubectl beco connect NAME -- <beco args>: give the beco command after --")
    return Invocation(ns, passthrough)


@dataclass(frozen=True, slots=True)
class ClientFiles:
    """Files of one CLI session: membership, and the TLS material when the network uses TLS."""

    membership: str
    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""


def beco_args(
    port: int, files: ClientFiles, user_args: Sequence[str], *, client_cert: bool = True
) -> list[str]:
    """The beco command line for a session through a local port-forward.

    ``client_cert``: whether this beco has --tls-cert/--tls-key/--tls-server-name (issue 8's
    TLS client work); without them only the CA is passed and a mutual-TLS network refuses.
    """
    args = ["--endpoint", f"127.0.0.1:{port}", "--membership", files.membership]
    if files.ca:
        args += ["--tls-ca", files.ca]
        if client_cert and files.cert:
            args += [
                "--tls-cert",
                files.cert,
                "--tls-key",
                files.key,
                "--tls-server-name",
                files.server_name,
            ]
    return args + list(user_args)


def parse_head(text: str) -> Head:
    """A head as ``beco --output json tree head`` prints it (and ``--save`` writes it)."""
    try:
        d = json.loads(text)
        return Head(
            tree_size=int(d.get("tree_size", 0)),
            root_hash=base64.b64decode(d.get("root_hash", ""), validate=True).hex(),
            timestamp_ms=int(d.get("timestamp_ms", 0)),
        )
    except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
        raise ValueError(f"not a saved tree head: {exc}") from None


def log_verdict(old: Head, new: Head, proof_rc: int | None, proof_stderr: str) -> tuple[int, str]:
    """verify-log's answer: (exit code, message). ``proof_rc`` is None when no proof was asked
    (the log is shorter than the saved head, so no proof can exist)."""
    if new.tree_size < old.tree_size:
        return FORK, (
            f"FORK: the log has {new.tree_size} leaves, fewer than the saved head's "
            f"{old.tree_size}: it was rolled back or replaced"
        )
    if proof_rc == 0:
        return OK, (
            f"OK: the log of size {new.tree_size} extends the saved head of size "
            f"{old.tree_size} (consistency proof verified with the membership's SST key)"
        )
    lines = [ln for ln in proof_stderr.strip().splitlines() if ln.strip()]
    why = lines[-1] if lines else f"beco exited {proof_rc}"
    if proof_rc == 1 and "verification FAILED" in proof_stderr:
        return FORK, (
            f"FORK: the log of size {new.tree_size} does not extend the saved head of size "
            f"{old.tree_size} ({why})"
        )
    # anything else is beco's own failure (network refused, unreachable): its exit code
    return (proof_rc if proof_rc is not None else ERROR), why
