"""Node memory at scale: every role with 1,000,000 users and 1,000,000 commits.

    nice -n 10 python -m benchmarks.memory_scale [--users 1000000] [--checkpoints 250000]
        [--live-s 180] [--writers 32] [--out docs/benchmarks.md]

(``make bench-memory-1m``.) Through the network a million commits take about 90 minutes
on this machine, so the database is filled in bulk, by the code the SST commits with:
each user's ``CreateUser`` request goes through ``model.apply`` (the state the SST would
store), the log leaf is the ``LogLeaf`` the SST builds (proposal header digest, voters,
request and state digests), its hash is appended to the real ``MerkleTree``, and every
``HEAD_EVERY`` commits (a batch) get one tree head signed with the SST's key
(``sign_tree_head``), as the SST signs one per batch; the rows are
written with COPY into the SST's own schema (migrated by ``SstStore.open``), constraints
on. Not real: the users' keys and request signatures are random bytes of the right
sizes (a million Ed25519 key pairs would take longer than the rest; the store never
re-verifies a committed request, only its digest is in the leaf). The SST then loads and
verifies that log at start like any other (leaf data against hashes, root against the
signed head), and the user nodes load every user through ``LoadUsers``.

Steps: the network starts empty (baseline RSS), is stopped; the database is filled up to
each checkpoint and the network started on it (RSS and peak RSS of each role once every
node is SERVING); at the last checkpoint writers then commit through the network for
``--live-s`` seconds (each writer creates a new user with a real key and updates it:
every commit touches a user no cache holds yet), and RSS is sampled meanwhile.
PostgreSQL: database size on disk (per table) and the PSS of all its processes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import multiprocessing
import os
import platform
import re
import shutil
import signal
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from beco.v1 import identity_pb2 as pb
from beco.v1 import peer_pb2 as ppb
from beco_node import keys, limits, membership, model, peer
from beco_node.client import Client
from beco_node.local.network import LocalNetwork, free_base_port
from beco_node.merkle.hashing import leaf_hash, node_hash
from beco_node.merkle.sth import sign_tree_head
from beco_node.merkle.tree import MerkleTree
from beco_node.sst.store import SstStore

from benchmarks.doc import write_section

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 20_000
# One signed tree head per this many commits, as the SST's batches under load write them.
HEAD_EVERY = 32
BASE_MS = 1_790_000_000_000
NAMES = 2_000  # first and last names each drawn from this many (distinct pairs per user)


def _status(pid: int, key: str) -> float:
    """A VmRSS / VmHWM figure of a process, in MB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    m = re.search(rf"{key}:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else float("nan")


def _pss_tree_mb(root_pid: int) -> float:
    """Proportional set size of a process and all its descendants (shared memory counted
    once across them), in MB: PostgreSQL's postmaster and backends."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            m = re.search(r"Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text())
        except OSError:
            continue
        total += int(m.group(1)) if m else 0
    return total / 1024


# -- bulk fill ------------------------------------------------------------------------------


@dataclass
class Rows:
    users: list[tuple[str, int, bytes, int]] = field(default_factory=list)
    leaves: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    changes: list[tuple[str, str, int, str, int, int]] = field(default_factory=list)
    heads: list[tuple[int, bytes, int]] = field(default_factory=list)  # size, root, ts


class Filler:
    """Builds the rows the SST would write for user ``i``'s CreateUser (see module doc),
    all but the tree heads (``heads`` below: they need the log in order)."""

    def __init__(self, ms: membership.Membership) -> None:
        self.voters = sorted(m.peer_id for m in ms.user_nodes)
        self.validator = ms.one("validator").peer_id
        self.firsts = [f"Given{j}" for j in range(NAMES)]
        self.lasts = [f"Family{j}" for j in range(NAMES)]

    def build(self, lo: int, hi: int) -> Rows:
        out = Rows()
        kind = model.MUTATIONS[model.CREATE_USER].kind
        for i in range(lo, hi):
            seed = i.to_bytes(8, "big")
            req = pb.CreateUserRequest(
                first_name=self.firsts[i % NAMES], last_name=self.lasts[(i // NAMES) % NAMES]
            )
            vts = BASE_MS + i
            req.auth.public_key = hashlib.sha256(b"pk" + seed).digest()
            req.auth.timestamp_ms = vts - 5
            req.auth.nonce = hashlib.sha256(b"nonce" + seed).digest()[:16]
            req.auth.signature = hashlib.sha512(b"sig" + seed).digest()
            caller = keys.peer_id(req.auth.public_key)
            pid = peer.proposal_id(req.auth.signature)
            state = model.apply(model.CREATE_USER, req, caller, None, 1, vts).SerializeToString(
                deterministic=True
            )
            request = req.SerializeToString()
            prop = ppb.Proposal(
                proposal_id=pid,
                user_id=caller,
                kind=kind,
                method=model.CREATE_USER,
                request=request,
                origin=self.voters[i % len(self.voters)],
            )
            header = ppb.ProposalHeader(
                proposal=prop, sequence=1, validator_ts_ms=vts, validator=self.validator
            )
            leaf = pb.LogLeaf(
                proposal_id=pid,
                user_id=caller,
                sequence=1,
                kind=kind,
                actor=caller,
                request_digest=hashlib.sha256(request).digest(),
                state_digest=hashlib.sha256(state).digest(),
                validator_ts_ms=vts,
                voters=self.voters,
                proposal_digest=peer.header_digest(header),
            ).SerializeToString(deterministic=True)
            committed = vts + 3
            out.users.append((caller, 1, state, committed))
            out.leaves.append((i, leaf_hash(leaf), leaf))
            out.changes.append((pid, caller, 1, kind, i, committed))
        return out


def heads(tree: MerkleTree, rows: Rows) -> list[tuple[int, bytes, int]]:
    """Append the chunk's leaves to the log's tree; the (size, root, time) of a head every
    ``HEAD_EVERY`` leaves and at the chunk's end (the SST signs one head per batch).

    The root at a size is the RFC 9162 fold of the tree's complete subtrees (the
    ``MerkleTree``'s own nodes, one per set bit of the size): ``MerkleTree.root()``
    gives the same, with more calls per size; it checks the last root of every chunk,
    and the SST checks the final one when it loads the log.
    """
    out = []
    levels = tree._levels  # the complete subtrees: levels[h][i] covers 2**h leaves
    last = rows.leaves[-1][0]
    for (index, lh, _), change in zip(rows.leaves, rows.changes, strict=True):
        assert tree.append(lh) == index
        n, h, acc = index + 1, 0, b""
        if n % HEAD_EVERY and index != last:
            continue
        while n >> h:
            if (n >> h) & 1:
                node = levels[h][(n >> h) - 1]
                acc = node if not acc else node_hash(node, acc)
            h += 1
        out.append((index + 1, acc, change[5]))
    assert out[-1][1] == tree.root()
    return out


_SIGNER: Any = None
_FILLER: Filler | None = None


def _init_worker(pem: bytes, ms_json: str) -> None:
    global _SIGNER, _FILLER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limits.canonical_name = functools.lru_cache(maxsize=None)(limits.canonical_name)  # pure
    _SIGNER = keys.private_key_from_pem(pem)
    _FILLER = Filler(membership.loads(ms_json))


def _build(lo: int, hi: int) -> Rows:
    assert _FILLER is not None
    return _FILLER.build(lo, hi)


def _sign(heads: list[tuple[int, bytes, int]]) -> list[tuple[int, bytes, int, bytes]]:
    return [
        (size, root, ts, sign_tree_head(_SIGNER, size, root, ts).signature)
        for size, root, ts in heads
    ]


async def fill(
    dsn: str, tree: MerkleTree, lo: int, hi: int, sst_pem: bytes, ms_json: str, workers: int
) -> float:
    """Write the rows of users [lo, hi); returns the seconds it took. Worker processes
    build the rows and sign the heads; this process keeps the tree; COPY overlaps both."""
    t0 = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("spawn")
    queue: asyncio.Queue[tuple[Rows, asyncio.Future[Any]] | None] = asyncio.Queue(maxsize=3)

    async def writer() -> None:
        while (item := await queue.get()) is not None:
            rows, signed = item
            signed_heads = await signed
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "users",
                    records=rows.users,
                    columns=["user_id", "sequence", "state", "updated_ms"],
                )
                await conn.copy_records_to_table(
                    "leaves", records=rows.leaves, columns=["leaf_index", "leaf_hash", "leaf_data"]
                )
                await conn.copy_records_to_table(
                    "changes",
                    records=rows.changes,
                    columns=[
                        "proposal_id",
                        "user_id",
                        "sequence",
                        "kind",
                        "leaf_index",
                        "committed_ms",
                    ],
                )
                await conn.copy_records_to_table(
                    "tree_heads",
                    records=signed_heads,
                    columns=["tree_size", "root_hash", "timestamp_ms", "signature"],
                )

    try:
        with ProcessPoolExecutor(
            workers, ctx, initializer=_init_worker, initargs=(sst_pem, ms_json)
        ) as ex:
            task = asyncio.create_task(writer())
            starts = list(range(lo, hi, CHUNK))
            builds = [loop.run_in_executor(ex, _build, a, min(hi, a + CHUNK)) for a in starts[:4]]
            waited = 0.0
            for k in range(len(starts)):
                tw = time.perf_counter()
                rows = await builds[k]
                waited += time.perf_counter() - tw
                if k + 4 < len(starts):  # a few chunks ahead, not all in memory at once
                    a = starts[k + 4]
                    builds.append(loop.run_in_executor(ex, _build, a, min(hi, a + CHUNK)))
                chunk_heads = await asyncio.to_thread(heads, tree, rows)
                await queue.put((rows, loop.run_in_executor(ex, _sign, chunk_heads)))
                if task.done():
                    break
            await queue.put(None)
            tw = time.perf_counter()
            await task
            print(
                f"fill [{lo:,}, {hi:,}): waited {waited:.0f} s for rows, "
                f"{time.perf_counter() - tw:.0f} s for the last writes",
                flush=True,
            )
    finally:
        await conn.close()
    return time.perf_counter() - t0


# -- the network ----------------------------------------------------------------------------


def rss(net: LocalNetwork, key: str = "VmRSS") -> dict[str, float]:
    out = {n.name: _status(n.proc.pid, key) for n in net.nodes.values() if n.proc is not None}
    return out


async def start_all(net: LocalNetwork, limit_s: float) -> dict[str, float]:
    """Start every node (SST first) and wait until each is SERVING; seconds per role."""
    took: dict[str, float] = {}
    t0 = time.perf_counter()
    sst = [n for n in net.nodes if net.nodes[n].role == "sst"]
    for name in sst:
        net.start_node(name)
    await net.wait_healthy(sst, limit_s)
    took["sst"] = time.perf_counter() - t0
    for name in net.order():
        net.start_node(name)
    for name in net.order():
        await net.wait_healthy([name], limit_s)
        took[name] = time.perf_counter() - t0
    return took


def stop_all(net: LocalNetwork) -> None:
    for name in reversed(net.order()):
        net.stop_node(name)


async def pg_sizes(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {"database": await conn.fetchval("SELECT pg_database_size(current_database())")}
        for t in ("users", "leaves", "changes", "tree_heads", "failed_proposals"):
            out[t] = await conn.fetchval("SELECT pg_total_relation_size($1)", t)
        return dict(out)
    finally:
        await conn.close()


async def live(net: LocalNetwork, seconds: float, writers: int, every_s: float) -> list[Any]:
    """Writers commit through the network; RSS sampled every ``every_s``."""
    eps = net.user_endpoints()
    done = [0]
    failed = [0]
    stop = time.monotonic() + seconds

    async def writer(i: int) -> None:
        while time.monotonic() < stop:
            async with Client(eps[i % len(eps)], keys.generate_private_key()) as c:
                try:
                    await c.create_user(f"Live{i}")
                    done[0] += 1
                    await c.set_first(c.user_id, f"Again{i}")
                    done[0] += 1
                except Exception:  # counted; the figure is memory, not availability
                    failed[0] += 1

    samples: list[Any] = []
    t0 = time.monotonic()

    async def sampler() -> None:
        while time.monotonic() < stop:
            samples.append((time.monotonic() - t0, done[0], rss(net)))
            await asyncio.sleep(every_s)

    await asyncio.gather(sampler(), *(writer(i) for i in range(writers)))
    samples.append((time.monotonic() - t0, done[0], rss(net)))
    samples.append(("failed", failed[0], {}))
    return samples


# -- report ---------------------------------------------------------------------------------


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


async def run(ns: argparse.Namespace) -> str:
    state = Path(tempfile.mkdtemp(prefix="beco-mem1m-"))
    net = LocalNetwork(state, base_port=free_base_port())
    checkpoints = sorted({*ns.checkpoints, ns.users})
    snaps: list[tuple[int, dict[str, float], dict[str, float], dict[str, float], float]] = []
    report: list[str] = []
    try:
        ms = net.prepare()
        dsn = await net.start_postgres()
        sst_pem = (state / "keys" / "sst.key").read_bytes()
        store = await SstStore.open(dsn, keys.private_key_from_pem(sst_pem))  # migrate
        await store.close()
        took = await start_all(net, ns.start_limit_s)
        await asyncio.sleep(3)
        snaps.append((0, rss(net), rss(net, "VmHWM"), took, 0.0))
        tree = MerkleTree()
        done = 0
        for cp in checkpoints:
            stop_all(net)
            fill_s = await fill(dsn, tree, done, cp, sst_pem, ms.dumps(), ns.workers)
            done = cp
            print(f"filled {cp:,} users and commits in {fill_s:.0f} s", flush=True)
            took = await start_all(net, ns.start_limit_s)
            await asyncio.sleep(3)
            snaps.append((cp, rss(net), rss(net, "VmHWM"), took, fill_s))
            print(f"{cp:,}: {snaps[-1][1]}", flush=True)
        sizes_before = await pg_sizes(dsn)
        pg = net.postgres
        pg_pss = _pss_tree_mb(pg.pid) if pg is not None and pg.pid is not None else float("nan")
        samples = await live(net, ns.live_s, ns.writers, ns.live_s / 8)
        sizes_after = await pg_sizes(dsn)
        pg_pss_after = (
            _pss_tree_mb(pg.pid) if pg is not None and pg.pid is not None else float("nan")
        )
        load = os.getloadavg()[0]
    finally:
        stop_all(net)
        await net.stop_postgres()
        shutil.rmtree(state, ignore_errors=True)

    names = [n for n in net.order() if n in snaps[0][1]]
    report += [
        "### Node memory at 1,000,000 users and commits (`make bench-memory-1m`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs shared with other engineers' work (load average at the end "
        f"{load:.1f}), Python {platform.python_version()}, under `nice -n 10`. Command: "
        f"`python -m benchmarks.memory_scale --users {ns.users} --checkpoints "
        f"{','.join(str(c) for c in ns.checkpoints)} --live-s {ns.live_s:.0f} --writers "
        f"{ns.writers}`. How the database is filled and what that leaves out: the module's "
        "docstring (real state encoding, log leaves, Merkle tree and signed tree heads "
        "written by COPY; random bytes for the bulk users' keys and request signatures). "
        "Each checkpoint: every node started on that database, figures once all are SERVING. "
        "RSS in MB (peak RSS, VmHWM, in brackets).",
        "",
    ]
    rows = []
    for cp, now, peak, took, fill_s in snaps:
        rows.append(
            [f"{cp:,}"]
            + [f"{now[n]:.0f} ({peak[n]:.0f})" for n in names]
            + [f"{max(took.values()):.0f} s", f"{fill_s:.0f} s" if cp else "-"]
        )
    report += _table(["users = commits", *names, "all SERVING after", "bulk fill"], rows)
    report += [
        "",
        "Then writers committed through the network (each a new user, created then updated):",
        "",
    ]
    rows = []
    for t, n, r in samples:
        if t == "failed":
            continue
        rows.append([f"{t:.0f} s", f"{n:,}"] + [f"{r.get(k, float('nan')):.0f}" for k in names])
    report += _table(["time", "commits", *names], rows)
    failed = next(n for t, n, _ in samples if t == "failed")
    mb = 1024 * 1024
    report += [
        "",
        f"Writes that failed during the live phase: {failed}.",
        "",
        f"PostgreSQL at {ns.users:,} users and commits: database {sizes_before['database'] / mb:,.0f} MB "
        f"on disk (users {sizes_before['users'] / mb:,.0f}, leaves {sizes_before['leaves'] / mb:,.0f}, "
        f"changes {sizes_before['changes'] / mb:,.0f}, tree_heads {sizes_before['tree_heads'] / mb:,.0f} MB, "
        "indexes and TOAST included), "
        f"{sizes_before['database'] / ns.users:,.0f} bytes per commit; after the live phase "
        f"{sizes_after['database'] / mb:,.0f} MB. Memory (PSS of the postmaster and its "
        f"backends): {pg_pss:.0f} MB after the nodes loaded, {pg_pss_after:.0f} MB after the "
        "live phase.",
    ]
    return "\n".join(report) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000, help="users = commits in the log")
    p.add_argument(
        "--checkpoints",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[250_000],
        help="also measure at these sizes on the way (comma-separated)",
    )
    p.add_argument("--live-s", type=float, default=180.0, help="commits through the network")
    p.add_argument("--writers", type=int, default=32)
    p.add_argument("--workers", type=int, default=3, help="processes building rows, signing heads")
    p.add_argument("--start-limit-s", type=float, default=1200.0)
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ns = p.parse_args(argv)
    text = asyncio.run(run(ns))
    write_section("memory-1m", text, Path(ns.out))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
