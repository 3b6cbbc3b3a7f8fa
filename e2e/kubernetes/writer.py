"""A steady writer, run *inside* the cluster (test_upgrade.py mounts it into a pod of our image).

A client of the network's Service, as an application in the cluster would be: every write is
a new answer from whichever ready user node kube-proxy picks. One user sets its first name to
w0, w1, ... (one write after the other, a short pause between) until ``/tmp/stop`` appears,
then resolves every write whose answer stayed indeterminate through the outcome API (what
``beco outcome PID`` does), and checks that every acknowledged write is in the user's history
with an inclusion proof that verifies against a tree head signed by the SST key of the
membership. One JSON object per line on stdout: a ``write`` per attempt, then a ``summary``.

Only the standard library and beco_node: it runs with the image's interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from beco.v1 import identity_pb2 as pb
from beco_node import keys, membership
from beco_node.client import DEFAULT_RETRY_FOR_S, INDETERMINATE, Client
from beco_node.merkle.hashing import leaf_hash
from beco_node.merkle.sth import SignedTreeHead, verify_tree_head
from beco_node.merkle.verify import ProofError, verify_inclusion

STOP = Path("/tmp/stop")


def emit(**obj: Any) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def _client(a: argparse.Namespace, key: Any) -> Client:
    d = Path(a.tls_dir)
    return Client(
        a.endpoint,
        key,
        timeout=a.timeout,
        tls_ca=(d / "ca.crt").read_bytes(),
        tls_cert=(d / "tls.crt").read_bytes(),
        tls_key=(d / "tls.key").read_bytes(),
        tls_server_name=a.server_name,
    )


async def _create(cl: Client) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            await cl.create_user("w", (), "load")
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


async def write_loop(a: argparse.Namespace, cl: Client) -> list[dict[str, Any]]:
    await _create(cl)
    emit(kind="ready", user=cl.user_id, t=time.time())
    out: list[dict[str, Any]] = []
    i = 0
    while not STOP.exists():  # noqa: ASYNC240 - a stat between writes, on purpose
        value = f"w{i}"
        start = time.time()
        cl.unresolved = None
        resends = cl.resends
        rec: dict[str, Any] = {"kind": "write", "i": i, "value": value, "t0": start}
        try:
            r = await cl.set_first(cl.user_id, value)
            rec.update(result="acked", seq=r.commit.sequence, leaf=r.commit.leaf_index)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            rec.update(code=code.name, details=(exc.details() or "")[:200])
            if code in INDETERMINATE and cl.unresolved:
                rec.update(result="indeterminate", pid=cl.unresolved)
            else:
                rec.update(result="failed")
        rec.update(t1=time.time(), resends=cl.resends - resends)
        emit(**rec)
        out.append(rec)
        i += 1
        await asyncio.sleep(a.pause)
    return out


async def resolve(cl: Client, pid: str, signed_at: float, within: float) -> str:
    """committed / failed / unknown: the write's final outcome, asked until it is final.

    ``unknown`` is final only once the request is older than the client's retry window
    (1.5 x the nodes' skew window): then it can no longer commit (verify() checks it is not
    in the log either)."""
    deadline = max(time.time() + within, signed_at + DEFAULT_RETRY_FOR_S + 5)
    while True:
        try:
            r = await cl.get_outcome(pid)
            if r.status == pb.PROPOSAL_STATUS_COMMITTED:
                return "committed"
            if r.status == pb.PROPOSAL_STATUS_FAILED:
                return "failed"
        except grpc.aio.AioRpcError:
            pass
        if time.time() > deadline:
            return "unknown"
        await asyncio.sleep(2)


async def verify(cl: Client, sst_key: bytes, writes: list[dict[str, Any]]) -> dict[str, Any]:
    """Every acknowledged write (and every one resolved as committed) in the history, each
    with a verified inclusion proof."""
    hist = await cl.history(cl.user_id)
    by_seq = {e.sequence: e for e in hist.entries}
    lost: list[dict[str, Any]] = []
    verified = 0
    for w in writes:
        if w["result"] != "acked" and w.get("outcome") != "committed":
            continue
        seq = w.get("seq")
        e = by_seq.get(seq) if seq is not None else None
        if e is None and seq is None:  # resolved as committed: find it by proposal id
            e = next((x for x in hist.entries if x.proposal_id == w.get("pid")), None)
        if e is None or (w.get("leaf") is not None and e.leaf_index != w["leaf"]):
            lost.append(w)
            continue
        proof = await cl.inclusion_proof(e.leaf_index)
        th = proof.tree_head
        try:
            verify_tree_head(
                sst_key, SignedTreeHead(th.tree_size, th.root_hash, th.timestamp_ms, th.signature)
            )
            verify_inclusion(
                leaf_hash(e.leaf_data),
                e.leaf_index,
                proof.tree_size,
                list(proof.hashes),
                th.root_hash,
            )
            verified += 1
        except ProofError as exc:
            lost.append({**w, "proof_error": str(exc)})
    pids = {e.proposal_id for e in hist.entries}
    unknown = [w for w in writes if w.get("outcome") == "unknown"]
    seqs = sorted(by_seq)
    return {
        # an unknown outcome must mean "not committed": such a write is not in the log
        "unknown_in_log": sum(1 for w in unknown if w["pid"] in pids),
        "history": len(hist.entries),
        "contiguous": seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True,
        "verified": verified,
        "lost": lost,
    }


async def main_async(a: argparse.Namespace, sst_key: bytes) -> int:
    key = keys.generate_private_key()
    async with _client(a, key) as cl:
        writes = await write_loop(a, cl)
        for w in writes:
            if w["result"] == "indeterminate":
                w["outcome"] = await resolve(cl, w["pid"], w["t0"], a.resolve_timeout)
                emit(kind="resolved", i=w["i"], pid=w["pid"], outcome=w["outcome"])
        check = await verify(cl, sst_key, writes)
        counts = {r: sum(1 for w in writes if w["result"] == r) for r in ("acked", "failed")}
        ind = [w for w in writes if w["result"] == "indeterminate"]
        emit(
            kind="summary",
            user=cl.user_id,
            writes=len(writes),
            acked=counts["acked"],
            failed=counts["failed"],
            indeterminate=len(ind),
            indeterminate_committed=sum(1 for w in ind if w["outcome"] == "committed"),
            indeterminate_failed=sum(1 for w in ind if w["outcome"] == "failed"),
            indeterminate_unknown=sum(1 for w in ind if w["outcome"] == "unknown"),
            resends=cl.resends,
            **check,
        )
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--server-name", required=True)
    p.add_argument("--tls-dir", required=True)
    p.add_argument("--membership", required=True)
    p.add_argument("--pause", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--resolve-timeout", type=float, default=30.0)
    a = p.parse_args()
    sst_key = membership.loads(Path(a.membership).read_text()).one("sst").public_key
    return asyncio.run(main_async(a, sst_key))


if __name__ == "__main__":
    sys.exit(main())
