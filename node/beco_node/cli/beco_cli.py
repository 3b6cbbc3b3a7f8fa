"""``beco``: the command-line client of a BECO network.

The caller's identity is an Ed25519 key file (``beco keygen --out alice.key``),
passed with ``--key`` (env ``BECO_KEY``); requests go to ``--endpoint`` (env
``BECO_ENDPOINT``, default ``localhost:9001``). Every write is signed; reads go through
a read session opened with one signed request (``beco_node.client``).

Proofs are verified here, offline, trusting only the SST's public key: taken
from ``--membership`` (env ``BECO_MEMBERSHIP``; ``./.state/local/membership.json``
when it exists) or ``--sst-key``; if neither is given the key the node reports
is used and a warning says so.

TLS: ``--tls-ca`` (trusted CA bundle), ``--tls-cert``/``--tls-key`` (your client
certificate, for a mutual-TLS network) and ``--tls-server-name`` (the name to check
the server's certificate against, e.g. through a port-forward to 127.0.0.1); any of
them switches to TLS. Env ``BECO_TLS_CA``/``_CERT``/``_KEY``/``_SERVER_NAME``.

Exit codes: 0 success; 1 a local error (file, key, proof that does not verify);
2 usage; ``10 + gRPC status code`` when the network refused the request
(e.g. 17 PERMISSION_DENIED, 26 UNAUTHENTICATED, 15 NOT_FOUND, 13 INVALID_ARGUMENT),
or 24 (UNAVAILABLE) when no connection to the endpoint could be made. The message
says which: "could not connect to ENDPOINT" or "ENDPOINT answered CODE: ...".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from beco.v1 import identity_pb2 as pb
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from beco_node import keys, membership
from beco_node.client import ACCESS, Client
from beco_node.merkle.hashing import leaf_hash
from beco_node.merkle.sth import SignedTreeHead, verify_tree_head
from beco_node.merkle.verify import ProofError, verify_consistency, verify_inclusion
from beco_node.origin import answered_by_node

DEFAULT_MEMBERSHIP = Path(".state/local/membership.json")


class CliError(Exception):
    """A local error with a message for the user (exit 1)."""


class UsageError(Exception):
    """Options that do not fit together (exit 2, like argparse)."""


def _uses_tls(ns: argparse.Namespace) -> bool:
    return bool(ns.tls_ca or ns.tls_cert or ns.tls_server_name)


def _rpc_error_text(ns: argparse.Namespace, exc: grpc.aio.AioRpcError) -> str:
    """Name the real cause: a status the network returned, or no connection at all."""
    code, details = exc.code(), exc.details() or ""
    if answered_by_node(exc):
        return f"{ns.endpoint} answered {code.name}: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        if _uses_tls(ns):
            hint = (
                "check --tls-ca (the network's CA), --tls-cert/--tls-key (your client"
                " certificate) and --tls-server-name (when the address is not a name in the"
                " server's certificate, e.g. a port-forward)"
            )
        else:
            hint = (
                "is the network up (`make run`, or your port-forward)? a TLS network needs"
                " --tls-ca, and --tls-cert/--tls-key for mutual TLS"
            )
        return f"could not connect to {ns.endpoint}: {details} ({hint})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {ns.endpoint} within {ns.timeout:g} s (--timeout)"
    return f"{ns.endpoint}: {code.name}: {details}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="beco", description="BECO command-line client")
    _common(p, real_defaults=True)
    # The same options are accepted after the subcommand too.
    common = argparse.ArgumentParser(add_help=False)
    _common(common, real_defaults=False)
    sub = _Sub(p.add_subparsers(dest="cmd", required=True), common)

    kg = sub.add_parser("keygen", help="create a new key file")
    kg.add_argument("--out", required=True)
    kg.add_argument("--force", action="store_true")
    sub.add_parser("whoami", help="print the user id of --key")

    user = sub.add_subparsers(sub.action.add_parser("user", help="create / get / list / history"))
    c = user.add_parser("create")
    c.add_argument("--first", default="")
    c.add_argument("--middle", action="append", default=[])
    c.add_argument("--last", default="")
    g = user.add_parser("get")
    g.add_argument("user_id", nargs="?")
    lst = user.add_parser("list")
    lst.add_argument("--page-size", type=int, default=0)
    lst.add_argument("--page-token", default="", help="only the page after this token")
    h = user.add_parser("history")
    h.add_argument("user_id", nargs="?")

    st = sub.add_subparsers(sub.action.add_parser("set", help="set a name"))
    for name in ("first", "last"):
        sp = st.add_parser(name)
        sp.add_argument("value")
        sp.add_argument("--user", help="whose name (default: yourself)")
        sp.add_argument("--expected-sequence", type=int, default=0)
    sm = st.add_parser("middle")
    sm.add_argument("values", nargs="*")
    sm.add_argument("--user")
    sm.add_argument("--expected-sequence", type=int, default=0)

    for verb in ("grant", "revoke"):
        gp = sub.add_parser(verb, help=f"{verb} viewer/editor access to one of your fields")
        gp.add_argument("field", choices=["first", "middle", "last"])
        gp.add_argument("grantee", help="the user id to grant / revoke")
        gp.add_argument("access", choices=list(ACCESS))
        gp.add_argument("--user", help="whose field (default: yourself)")

    tree = sub.add_subparsers(sub.action.add_parser("tree", help="the signed tree head"))
    th = tree.add_parser("head")
    th.add_argument("--save", help="write the verified head to this JSON file")

    proof = sub.add_subparsers(sub.action.add_parser("proof", help="verify proofs offline"))
    pi = proof.add_parser("inclusion", help="a user's change is in the log")
    pi.add_argument("user_id", nargs="?")
    pi.add_argument("--sequence", type=int, default=0, help="default: the latest change")
    oc = sub.add_parser("outcome", help="the final outcome of a write, by its proposal id")
    oc.add_argument("proposal_id", help="printed when a write's outcome stayed unknown")
    pc = proof.add_parser("consistency", help="the log only grew since a saved head")
    pc.add_argument("--old-head", required=True, help="a file from `beco tree head --save`")
    return p


def _read(path: str) -> str:
    return Path(path).read_text()


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def _write(path: str, text: str) -> None:
    Path(path).write_text(text)


def _common(p: argparse.ArgumentParser, *, real_defaults: bool) -> None:
    def d(value: Any) -> Any:
        return value if real_defaults else argparse.SUPPRESS

    p.add_argument(
        "--endpoint",
        default=d(os.environ.get("BECO_ENDPOINT", "localhost:9001")),
        help="a user node, host:port [BECO_ENDPOINT, default localhost:9001]",
    )
    p.add_argument("--key", default=d(os.environ.get("BECO_KEY")), help="your key file [BECO_KEY]")
    p.add_argument("--output", choices=["text", "json"], default=d("text"))
    p.add_argument(
        "--membership",
        default=d(os.environ.get("BECO_MEMBERSHIP")),
        help="membership file to take the SST key from [BECO_MEMBERSHIP]",
    )
    p.add_argument("--sst-key", default=d(None), help="the SST public key (base64)")
    p.add_argument("--timeout", type=float, default=d(30.0), help="seconds per request")
    p.add_argument(
        "--tls-ca",
        default=d(os.environ.get("BECO_TLS_CA")),
        help="use TLS, trusting this CA bundle (PEM) [BECO_TLS_CA]; default plaintext",
    )
    p.add_argument(
        "--tls-cert",
        default=d(os.environ.get("BECO_TLS_CERT")),
        help="your client certificate (PEM) for a mutual-TLS network [BECO_TLS_CERT]",
    )
    p.add_argument(
        "--tls-key",
        default=d(os.environ.get("BECO_TLS_KEY")),
        help="the private key (PEM) of --tls-cert [BECO_TLS_KEY]",
    )
    p.add_argument(
        "--tls-server-name",
        default=d(os.environ.get("BECO_TLS_SERVER_NAME")),
        help="check the server certificate for this name, e.g. through a port-forward"
        " to 127.0.0.1 [BECO_TLS_SERVER_NAME]",
    )


class _Sub:
    """Subparsers that all accept the common options."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self.action = action
        self.common = common

    def add_parser(self, name: str, **kw: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.action.add_parser(name, parents=[self.common], **kw)
        return parser

    def add_subparsers(self, parser: argparse.ArgumentParser) -> _Sub:
        return _Sub(parser.add_subparsers(dest="sub", required=True), self.common)


def _load_key(path: str | None) -> Any:
    if not path:
        raise CliError("no key: pass --key FILE (create one with `beco keygen --out FILE`)")
    try:
        return keys.private_key_from_pem(Path(path).read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read key file {path}: {exc.strerror}") from None
    except keys.KeyError_ as exc:
        raise CliError(f"{path}: {exc}") from None


def _sst_key(ns: argparse.Namespace, reported: bytes) -> bytes:
    if ns.sst_key:
        try:
            return keys.public_key_from_b64(ns.sst_key)
        except keys.KeyError_ as exc:
            raise CliError(f"--sst-key: {exc}") from None
    path = Path(ns.membership) if ns.membership else DEFAULT_MEMBERSHIP
    if path.exists():
        try:
            return membership.loads(path.read_text()).one("sst").public_key
        except membership.MembershipError as exc:
            raise CliError(f"{path}: {exc}") from None
    if ns.membership:
        raise CliError(f"membership file {path} not found")
    print(
        "warning: no --membership or --sst-key; trusting the SST key the node reported",
        file=sys.stderr,
    )
    return reported


def _sth(th: pb.TreeHead) -> SignedTreeHead:
    return SignedTreeHead(th.tree_size, th.root_hash, th.timestamp_ms, th.signature)


def _emit(ns: argparse.Namespace, obj: Message | dict[str, Any], text: str | None = None) -> None:
    data = obj if isinstance(obj, dict) else MessageToDict(obj, preserving_proto_field_name=True)
    if ns.output == "json" or text is None:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


def _field_text(name: str, fv: pb.FieldView) -> str:
    if not fv.readable:
        return f"  {name:<13}(not visible to you)"
    val = " ".join(fv.values) if fv.values else "-"
    line = f"  {name:<13}{val}"
    if fv.caller_is_owner or fv.caller_access == pb.ACCESS_EDITOR:
        line += f"   editors={list(fv.editors)} viewers={list(fv.viewers)}"
    return line


def _user_text(u: pb.User) -> str:
    return "\n".join(
        [
            f"user {u.user_id} (sequence {u.sequence})",
            _field_text("first name", u.first_name),
            _field_text("middle names", u.middle_names),
            _field_text("last name", u.last_name),
        ]
    )


def _commit_text(r: pb.MutationResponse) -> str:
    c = r.commit
    return (
        _user_text(r.user)
        + f"\ncommitted: sequence {c.sequence}, log leaf {c.leaf_index}, tree size {c.tree_head.tree_size}"
    )


async def _run(ns: argparse.Namespace) -> int:
    key = _load_key(ns.key)
    if bool(ns.tls_cert) != bool(ns.tls_key):
        raise UsageError("--tls-cert and --tls-key go together (your client certificate and key)")
    client = Client(
        ns.endpoint,
        key,
        timeout=ns.timeout,
        tls_ca=_read_bytes(ns.tls_ca) if ns.tls_ca else None,
        tls_cert=_read_bytes(ns.tls_cert) if ns.tls_cert else None,
        tls_key=_read_bytes(ns.tls_key) if ns.tls_key else None,
        tls_server_name=ns.tls_server_name or None,
        # One process, one command, mostly one read: a session would cost a call more than it
        # saves. Long-lived clients (the library's default) are where sessions pay.
        sessions=False,
    )
    ns.unresolved_write = client  # read by main() when a write's outcome stays unknown
    async with client as cl:
        me = cl.user_id
        cmd, sub = ns.cmd, getattr(ns, "sub", None)
        if cmd == "user" and sub == "create":
            r = await cl.create_user(ns.first, ns.middle, ns.last)
            _emit(ns, r, _commit_text(r))
        elif cmd == "user" and sub == "get":
            u = await cl.get_user(ns.user_id or me)
            _emit(ns, u, _user_text(u))
        elif cmd == "user" and sub == "list":
            if ns.page_token:  # one page; otherwise every page
                lr = await cl.list_users(ns.page_size, ns.page_token)
            else:
                lr = await cl.list_all_users(ns.page_size)
            text = "\n".join(_user_text(u) for u in lr.users) or "(no users visible to you)"
            if lr.next_page_token:
                text += f"\nmore: --page-token {lr.next_page_token}"
            _emit(ns, lr, text)
        elif cmd == "user" and sub == "history":
            hist = await cl.history(ns.user_id or me)
            text = "\n".join(
                f"seq {e.sequence:<4} {e.kind:<17} leaf {e.leaf_index:<6} proposal {e.proposal_id[:16]}"
                for e in hist.entries
            )
            _emit(ns, hist, text or "(no history)")
        elif cmd == "set":
            uid = ns.user or me
            if sub == "first":
                r = await cl.set_first(uid, ns.value, ns.expected_sequence)
            elif sub == "last":
                r = await cl.set_last(uid, ns.value, ns.expected_sequence)
            else:
                r = await cl.set_middle(uid, ns.values, ns.expected_sequence)
            _emit(ns, r, _commit_text(r))
        elif cmd in ("grant", "revoke"):
            fn = cl.grant if cmd == "grant" else cl.revoke
            r = await fn(ns.user or me, ns.field, ns.grantee, ns.access)
            _emit(ns, r, _commit_text(r))
        elif cmd == "tree":
            th = await cl.tree_head()
            verify_tree_head(_sst_key(ns, th.sst_public_key), _sth(th))
            d = MessageToDict(th, preserving_proto_field_name=True)
            if ns.save:
                _write(ns.save, json.dumps(d, indent=2, sort_keys=True) + "\n")
            _emit(
                ns,
                d,
                f"tree size {th.tree_size}\nroot {th.root_hash.hex()}\n"
                f"timestamp_ms {th.timestamp_ms}\nsignature verified with the SST key",
            )
        elif cmd == "proof" and sub == "inclusion":
            await _inclusion(ns, cl)
        elif cmd == "proof" and sub == "consistency":
            await _consistency(ns, cl)
        elif cmd == "outcome":
            return await _outcome(ns, cl)
        else:  # pragma: no cover - argparse rejects anything else
            raise CliError(f"unknown command {cmd} {sub}")
    return 0


async def _outcome(ns: argparse.Namespace, cl: Client) -> int:
    """Committed: exit 0; failed: 10 + its status code, like the write itself; unknown: 1."""
    out = await cl.get_outcome(ns.proposal_id)
    if out.status == pb.PROPOSAL_STATUS_COMMITTED:
        c = out.commit
        text = (
            f"committed: sequence {c.sequence}, log leaf {c.leaf_index}, "
            f"tree size {c.tree_head.tree_size}"
        )
        _emit(ns, out, text)
        return 0
    if out.status == pb.PROPOSAL_STATUS_FAILED:
        _emit(ns, out, f"failed ({out.code}): {out.reason}")
        code = getattr(grpc.StatusCode, out.code, grpc.StatusCode.ABORTED)
        return 10 + int(code.value[0])
    _emit(ns, out, "unknown: not committed, and not (yet) failed for good")
    return 1


async def _inclusion(ns: argparse.Namespace, cl: Client) -> None:
    uid = ns.user_id or cl.user_id
    hist = await cl.history(uid)
    if not hist.entries:
        raise CliError(f"user {uid} has no committed changes")
    entries = [e for e in hist.entries if not ns.sequence or e.sequence == ns.sequence]
    if not entries:
        raise CliError(f"user {uid} has no change with sequence {ns.sequence}")
    entry = entries[-1]
    leaf = pb.LogLeaf()
    leaf.ParseFromString(entry.leaf_data)
    if leaf.user_id != uid or leaf.sequence != entry.sequence:
        raise CliError("the log leaf does not describe the change the node listed")
    proof = await cl.inclusion_proof(entry.leaf_index)
    th = proof.tree_head
    verify_tree_head(_sst_key(ns, th.sst_public_key), _sth(th))
    verify_inclusion(
        leaf_hash(entry.leaf_data),
        entry.leaf_index,
        proof.tree_size,
        list(proof.hashes),
        th.root_hash,
    )
    _emit(
        ns,
        {
            "verified": True,
            "user_id": uid,
            "sequence": entry.sequence,
            "kind": entry.kind,
            "leaf_index": entry.leaf_index,
            "leaf_hash": leaf_hash(entry.leaf_data).hex(),
            "tree_size": proof.tree_size,
            "root_hash": th.root_hash.hex(),
            "proof_length": len(proof.hashes),
        },
        f"OK: change {entry.sequence} ({entry.kind}) of {uid} is leaf {entry.leaf_index} "
        f"of the signed tree of size {proof.tree_size} (root {th.root_hash.hex()[:16]}..., "
        f"{len(proof.hashes)} proof hashes)",
    )


async def _consistency(ns: argparse.Namespace, cl: Client) -> None:
    try:
        old_d = json.loads(_read(ns.old_head))
        old = pb.TreeHead(
            tree_size=int(old_d.get("tree_size", 0)),
            root_hash=base64.b64decode(old_d["root_hash"]),
            timestamp_ms=int(old_d.get("timestamp_ms", 0)),
            signature=base64.b64decode(old_d["signature"]),
            sst_public_key=base64.b64decode(old_d.get("sst_public_key", "")),
        )
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"cannot read the saved tree head {ns.old_head}: {exc}") from None
    proof = await cl.consistency_proof(old.tree_size)
    new = proof.tree_head
    sst = _sst_key(ns, new.sst_public_key)
    verify_tree_head(sst, _sth(old))
    verify_tree_head(sst, _sth(new))
    verify_consistency(
        old.tree_size, new.tree_size, old.root_hash, new.root_hash, list(proof.hashes)
    )
    _emit(
        ns,
        {"verified": True, "old_size": old.tree_size, "new_size": new.tree_size},
        f"OK: the log of size {new.tree_size} extends the saved head of size {old.tree_size}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        if ns.cmd == "keygen":
            out = Path(ns.out)
            if out.exists() and not ns.force:
                raise CliError(f"{out} exists (use --force to overwrite)")
            key = keys.generate_private_key()
            out.write_bytes(keys.private_key_to_pem(key))
            out.chmod(0o600)
            uid = keys.peer_id(keys.public_key_bytes(key))
            _emit(ns, {"key_file": str(out), "user_id": uid}, f"wrote {out}; your user id: {uid}")
            return 0
        if ns.cmd == "whoami":
            uid = keys.peer_id(keys.public_key_bytes(_load_key(ns.key)))
            _emit(ns, {"user_id": uid}, uid)
            return 0
        return asyncio.run(_run(ns))
    except CliError as exc:
        print(f"beco: {exc}", file=sys.stderr)
        return 1
    except ProofError as exc:
        print(f"beco: verification FAILED: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"beco: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"beco: {_rpc_error_text(ns, exc)}", file=sys.stderr)
        unresolved = getattr(ns, "unresolved_write", None)
        if unresolved is not None and unresolved.unresolved:
            pid = unresolved.unresolved
            print(
                f"beco: the write's outcome is unknown (it may still commit); do not re-run it,"
                f" ask: beco outcome {pid}",
                file=sys.stderr,
            )
        return 10 + int(exc.code().value[0])


if __name__ == "__main__":
    sys.exit(main())
