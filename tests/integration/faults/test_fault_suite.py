"""The fault suite: real processes, real PostgreSQL, concurrent writers, and each role
killed in turn (kill -9 of a user node, the validator, the SST, PostgreSQL; then a
SIGSTOP of a user node). Every invocation and its answer is recorded; a history checker
then asserts the guarantees of docs/reliability.md. Figures go to the log (-s) and to
``$BECO_FAULT_FIGURES`` when set."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from beco.v1 import identity_pb2 as pb
from beco_node import auth, keys, settings
from beco_node.client import INDETERMINATE, Client, proposal_id
from beco_node.clock import now_ms
from beco_node.local.network import LocalNetwork, free_base_port
from beco_node.membership import loads
from beco_node.merkle.hashing import leaf_hash
from beco_node.merkle.sth import SignedTreeHead, verify_tree_head
from beco_node.merkle.verify import verify_inclusion
from beco_node.pg.embedded import free_port
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WRITERS = 4
M = "/beco.v1.Identity/UpdateFirstName"


@dataclass
class Op:
    writer: int
    node: int
    request: pb.UpdateFirstNameRequest
    started: float
    ended: float = 0.0
    result: str = ""  # ok | failed | unknown
    code: str = ""
    details: str = ""
    sequence: int = 0
    leaf_index: int = -1

    @property
    def pid(self) -> str:
        return proposal_id(self.request)


@dataclass
class Writer:
    idx: int
    key: Ed25519PrivateKey
    uid: str
    ops: list[Op] = field(default_factory=list)
    resends: int = 0


class Postgres:
    """PostgreSQL run by ``python -m beco_node.pg`` in its own process: (re)started from a
    process without gRPC threads (forking this one with a preexec_fn can crash the child)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "beco_node.pg", str(self.data_dir), "--port", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    async def start(self) -> str:
        self.proc = self._spawn()
        assert self.proc.stdout is not None
        dsn = (await asyncio.to_thread(self.proc.stdout.readline)).strip()
        assert dsn.startswith("postgresql://"), f"PostgreSQL did not start ({dsn!r})"
        return dsn

    async def kill9(self) -> None:
        """kill -9 of the postmaster and every backend (its process group)."""
        text = await asyncio.to_thread((self.data_dir / "pgdata" / "postmaster.pid").read_text)
        pgid = int(text.split()[0])
        os.killpg(pgid, signal.SIGKILL)
        await self.stop()  # the launcher reaps its dead server and exits
        for _ in range(400):  # every backend gone too
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 30)
        self.proc = None


@pytest.fixture
async def pg() -> AsyncIterator[tuple[Postgres, str]]:
    base = Path(tempfile.mkdtemp(prefix="beco-faults-pg-"))
    p = Postgres(base / "pg")
    try:
        dsn = await p.start()
        yield p, dsn
    finally:
        await p.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def net(pg: tuple[Postgres, str]) -> AsyncIterator[LocalNetwork]:
    state = Path(tempfile.mkdtemp(prefix="beco-faults-"))
    n = LocalNetwork(
        state,
        base_port=free_base_port(),
        database_url=pg[1],
        extra_env={"BECO_VOTE_TIMEOUT_MS": "3000", "BECO_LOG_LEVEL": "INFO"},
    )
    try:
        await n.up()
        yield n
    finally:
        await n.down()
        shutil.rmtree(state, ignore_errors=True)


def clients(net: LocalNetwork, key: Ed25519PrivateKey) -> list[Client]:
    return [Client(e, key, retry_for=40) for e in net.user_endpoints()]


async def write_loop(net: LocalNetwork, w: Writer, stop: asyncio.Event) -> None:
    cs = clients(net, w.key)
    try:
        i = 0
        while not stop.is_set():
            node = (w.idx + i) % len(cs)
            req = pb.UpdateFirstNameRequest(user_id=w.uid, first_name=f"w{w.idx}-{i}")
            auth.sign_request(M, req, w.key, now_ms())
            op = Op(w.idx, node, req, time.monotonic())
            w.ops.append(op)
            try:
                r = await cs[node].send_write("UpdateFirstName", req)
                op.result, op.sequence, op.leaf_index = "ok", r.commit.sequence, r.commit.leaf_index
            except grpc.aio.AioRpcError as exc:
                op.code, op.details = exc.code().name, exc.details() or ""
                op.result = "unknown" if exc.code() in INDETERMINATE else "failed"
            op.ended = time.monotonic()
            i += 1
    finally:
        for c in cs:
            w.resends += c.resends
            await c.close()


def kill9(net: LocalNetwork, name: str) -> None:
    proc = net.nodes[name].proc
    assert proc is not None
    proc.kill()
    proc.wait()
    net.nodes[name].proc = None


async def test_writes_under_faults_keep_every_guarantee(
    net: LocalNetwork, pg: tuple[Postgres, str]
) -> None:
    writers = []
    for i in range(WRITERS):
        key = keys.generate_private_key()
        w = Writer(i, key, keys.peer_id(keys.public_key_bytes(key)))
        async with Client(net.user_endpoints()[i % 3], key) as c:
            await c.create_user(f"W{i}")
        writers.append(w)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(write_loop(net, w, stop)) for w in writers]
    faults: list[tuple[str, float, float]] = []  # (fault, started, back)

    async def restart(name: str) -> None:
        t0 = time.monotonic()
        kill9(net, name)
        await asyncio.sleep(1)
        net.start_node(name)
        await net.wait_healthy([name])
        faults.append((f"kill -9 {name}", t0, time.monotonic()))
        await asyncio.sleep(3)

    await asyncio.sleep(3)
    await restart("user-c-0")
    await restart("validator")
    await restart("sst")
    t0 = time.monotonic()
    await pg[0].kill9()
    await pg[0].start()
    faults.append(("kill -9 postgres", t0, time.monotonic()))
    await asyncio.sleep(3)
    stopped = net.nodes["user-b-0"].proc
    assert stopped is not None
    t0 = time.monotonic()
    stopped.send_signal(signal.SIGSTOP)
    await asyncio.sleep(6)
    stopped.send_signal(signal.SIGCONT)
    faults.append(("SIGSTOP user-b-0 (6 s)", t0, time.monotonic()))
    await asyncio.sleep(3)
    stop.set()
    await asyncio.gather(*tasks)
    await check(net, writers, faults)


async def check(
    net: LocalNetwork, writers: list[Writer], faults: list[tuple[str, float, float]]
) -> None:
    sst_key = loads(net.membership_path.read_text()).one("sst").public_key
    ops = [op for w in writers for op in w.ops]
    # 0 UNKNOWN / INTERNAL answers
    assert not [op for op in ops if op.code in ("UNKNOWN", "INTERNAL")]
    resolved: dict[str, str] = {}
    figures: dict[str, object] = {
        "writes": len(ops),
        "acknowledged": sum(op.result == "ok" for op in ops),
        "failed": sum(op.result == "failed" for op in ops),
        "failed_codes": sorted({op.code for op in ops if op.result == "failed"}),
        "indeterminate": sum(op.result == "unknown" for op in ops),
        # of which the client knew the request never left (the node was down)
        "never_sent": sum(
            op.result == "unknown" and "failed to connect" in op.details for op in ops
        ),
        "resends": sum(w.resends for w in writers),
    }
    for w in writers:
        async with Client(net.user_endpoints()[0], w.key) as c:
            # first, every indeterminate answer resolves to exactly one final outcome (a
            # re-send within the skew window may still commit it: that is its outcome)
            for op in w.ops:
                if op.result != "unknown":
                    continue
                out = await c.get_outcome(op.pid)
                if out.status == pb.PROPOSAL_STATUS_UNKNOWN:
                    try:
                        await c.send_write("UpdateFirstName", op.request)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() not in INDETERMINATE, exc.details()
                    out = await c.get_outcome(op.pid)
                assert out.status in (pb.PROPOSAL_STATUS_COMMITTED, pb.PROPOSAL_STATUS_FAILED)
                resolved[op.pid] = pb.ProposalStatus.Name(out.status)
            hist = await c.history(w.uid)
            seqs = [e.sequence for e in hist.entries]
            # one total order: sequences 1..n, each once
            assert seqs == list(range(1, len(seqs) + 1)), seqs
            by_pid = {e.proposal_id: e for e in hist.entries}
            mine = {op.pid: op for op in w.ops}
            # no commit that nobody asked for (besides the creation)
            assert set(by_pid) - set(mine) == {hist.entries[0].proposal_id}
            last_acked = 0
            for op in w.ops:
                entry = by_pid.get(op.pid)
                if op.result == "ok":
                    assert entry is not None, f"acknowledged write {op.pid} not in the history"
                    assert (entry.sequence, entry.leaf_index) == (op.sequence, op.leaf_index)
                    # a writer is sequential: its acknowledgments follow its real-time order
                    assert op.sequence > last_acked
                    last_acked = op.sequence
                    proof = await c.inclusion_proof(entry.leaf_index)
                    th = proof.tree_head
                    verify_tree_head(
                        sst_key,
                        SignedTreeHead(th.tree_size, th.root_hash, th.timestamp_ms, th.signature),
                    )
                    verify_inclusion(
                        leaf_hash(entry.leaf_data),
                        entry.leaf_index,
                        proof.tree_size,
                        list(proof.hashes),
                        th.root_hash,
                    )
                elif op.result == "failed":
                    assert entry is None, f"write {op.pid} answered {op.code} but committed"
                    out = await c.get_outcome(op.pid)
                    assert out.status != pb.PROPOSAL_STATUS_COMMITTED
                else:  # resolved above: the history agrees
                    committed = resolved[op.pid] == "PROPOSAL_STATUS_COMMITTED"
                    assert (entry is not None) == committed, op.pid
            # every node serves the latest state within the bound after the last fault
            latest = seqs[-1]
        await asyncio.sleep(settings.DEFAULT_STALENESS_BOUND_MS / 1000)
        for endpoint in net.user_endpoints():
            async with Client(endpoint, w.key) as c:
                assert (await c.get_user(w.uid)).sequence == latest, endpoint
    acks = sorted(op.ended for op in ops if op.result == "ok")
    recovery = {}
    for name, t0, back in faults:
        window = [t for t in acks if t0 < t <= back + 3]
        recovery[name] = {
            "role_back_s": round(back - t0, 2),
            "first_ack_after_s": round(window[0] - t0, 2) if window else None,
            "longest_ack_gap_s": round(
                max((b - a for a, b in zip([t0, *window], window, strict=False)), default=0), 2
            ),
        }
    figures["indeterminate_resolved"] = {
        k: sum(v == k for v in resolved.values()) for k in sorted(set(resolved.values()))
    }
    figures["recovery"] = recovery
    print("fault-suite figures:", json.dumps(figures, indent=2))
    target = os.environ.get("BECO_FAULT_FIGURES")
    if target:
        await asyncio.to_thread(Path(target).write_text, json.dumps(figures, indent=2) + "\n")
