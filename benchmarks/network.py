"""Network benchmarks on the 3-zone local network, in one run: commits/s, commit latency,
server CPU per commit per role, reads next to an empty gRPC call's floor on the same node,
and how commits/s and CPU per commit change with 3, 6 and 9 user nodes. Writes the
``network`` section of docs/benchmarks.md.

    python -m benchmarks.network [--seconds 5] [--scale 1,2,3] [--before-ref REV] [--save FILE]
    python -m benchmarks.network --reads-only   # the read phase on one network, printed

Everything runs for real: PostgreSQL (embedded), SST, rendezvous, validator and the user
nodes as separate processes, gRPC over loopback. The load generators are separate
processes on the same cores. CPU is read from /proc for every process (PostgreSQL with
its backends), so CPU per commit and per read hold on a shared, loaded machine where
throughput alone does not. Every phase is bounded by time (a few seconds).

``--before-ref REV``: the same phases, in the same run and on the same machine, against the
nodes of an earlier revision (its ``node/`` from git, imported by the node processes only;
this benchmark and its load generators stay as they are). A revision without read
sessions is read with signed reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from beco.v1 import identity_pb2 as pb
from beco.v1 import identity_pb2_grpc as pb_grpc
from beco_node import auth, keys
from beco_node.client import Client, multiplexed_channel
from beco_node.clock import now_ms
from beco_node.local.network import LocalNetwork, free_base_port
from beco_node.session import ClientSession
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import commit_floor
from benchmarks.doc import cpu_model, write_section
from benchmarks.stats import pct

ROOT = Path(__file__).resolve().parent.parent
GET = "/beco.v1.Identity/GetUser"
HEALTH = "/grpc.health.v1.Health/Check"
TICK = os.sysconf("SC_CLK_TCK")
ROLES = ("user", "validator", "sst", "postgres", "rendezvous")


# ---------------------------------------------------------------- CPU from /proc
def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds) of a live process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    f = text[text.rindex(")") + 2 :].split()
    return int(f[1]), (int(f[11]) + int(f[12])) / TICK


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant (PostgreSQL's backends)."""
    parents: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid, c = _stat(int(d))
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(d))
            cpu[int(d)] = c
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(parents.get(p, []))
    return total


def cpu_by_role(net: LocalNetwork) -> dict[str, float]:
    out = dict.fromkeys(ROLES, 0.0)
    for n in net.nodes.values():
        if n.proc is not None:
            out[n.role] += tree_cpu(n.proc.pid)
    pg = net.postgres
    if pg is not None and pg.pid is not None:
        out["postgres"] += tree_cpu(pg.pid)
    return out


# ---------------------------------------------------------------- profiles (py-spy)
def start_profiles(
    net: LocalNetwork,
    out: Path,
    seconds: float,
    roles: tuple[str, ...] = ("user", "validator", "sst"),
) -> list[subprocess.Popen[bytes]]:
    """py-spy on the first process of each role for ``seconds``: collapsed stacks in ``out``
    (the first user node is the one the read phase uses)."""
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    procs = []
    for n in net.nodes.values():
        if n.proc is None or n.role in seen or n.role not in roles:
            continue
        seen.add(n.role)
        cmd = [
            str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking",
            "-d", str(int(seconds)), "-r", "200", "-f", "raw",
            "-o", str(out / f"{n.role}.txt"), "-p", str(n.proc.pid),
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def top_self(path: Path, n: int = 12) -> list[tuple[str, float]]:
    """The functions with the most samples on top of the stack (self time), as shares."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, k = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.split(";")[-1]
        counts[leaf] = counts.get(leaf, 0) + int(k)
        total += int(k)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return [(name, c / max(total, 1)) for name, c in ranked]


def print_profiles(where: Path) -> None:
    for f in sorted(where.rglob("*.txt")):
        print(f"profile {f.relative_to(where)} (self time):", flush=True)
        for name, share in top_self(f):
            print(f"  {share:6.1%}  {name}", flush=True)


# ---------------------------------------------------------------- load workers
READ_MODES = ("read", "signed_read", "floor")  # session reads, signed reads, empty calls


def _signed_gets(key_pem: bytes, uid: str, n: int) -> list[pb.GetUserRequest]:
    key = keys.private_key_from_pem(key_pem)
    out = []
    for _ in range(n):
        r = pb.GetUserRequest(user_id=uid)
        auth.sign_request(GET, r, key, now_ms())
        out.append(r)
    return out


def _session_gets(cs: ClientSession, uid: str, n: int) -> list[pb.GetUserRequest]:
    out = []
    for _ in range(n):
        r = pb.GetUserRequest(user_id=uid)
        cs.seal(GET, r)
        out.append(r)
    return out


def _health(ch: grpc.aio.Channel) -> Any:
    return ch.unary_unary(HEALTH, request_serializer=lambda _: b"", response_deserializer=bytes)


async def _read_load(
    endpoint: str,
    key_pem: bytes,
    uid: str,
    n: int,
    concurrency: int,
    mode: str,
    seconds: float,
    go: Any,
    q: Any,
) -> tuple[int, float, float]:
    """Prepare ``n`` requests (signed, or sealed with a session opened here), then send them
    for at most ``seconds``; return (answered, wall seconds, CPU seconds)."""
    reqs: list[Any]
    if mode == "floor":
        reqs = [None] * (n + 1)
    elif mode == "signed_read":
        reqs = _signed_gets(key_pem, uid, n + 1)
    else:
        async with Client(endpoint, keys.private_key_from_pem(key_pem)) as c:
            reqs = _session_gets(await c.open_session(), uid, n + 1)
    async with grpc.aio.insecure_channel(endpoint) as ch:
        call = _health(ch) if mode == "floor" else pb_grpc.IdentityStub(ch).GetUser
        await call(reqs.pop(0), timeout=10)  # connect
        q.put("ready")
        await asyncio.to_thread(go.wait)
        c0 = time.process_time()
        it = iter(reqs)
        done = 0
        t0 = time.perf_counter()
        end = t0 + seconds

        async def worker() -> None:
            nonlocal done
            for r in it:
                if time.perf_counter() > end:
                    return
                await call(r, timeout=10)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, time.perf_counter() - t0, time.process_time() - c0


def read_worker(
    endpoint: str,
    key_pem: bytes,
    uid: str,
    n: int,
    conc: int,
    mode: str,
    seconds: float,
    go: Any,
    q: Any,
) -> None:
    q.put(asyncio.run(_read_load(endpoint, key_pem, uid, n, conc, mode, seconds, go, q)))


async def _commit_load(
    eps: list[str], users: int, seconds: float, first: int, multiplex: bool, go: Any, q: Any
) -> None:
    people = [keys.generate_private_key() for _ in range(users)]
    # multiplex: the process's users share one Identity/Calls stream per node
    shared = (
        {ep: multiplexed_channel(grpc.aio.insecure_channel(ep), ep) for ep in eps}
        if multiplex
        else {}
    )
    clients = [
        Client(ep, k, channel=shared[ep]) if multiplex else Client(ep, k)
        for ep, k in ((eps[(first + i) % len(eps)], k) for i, k in enumerate(people))
    ]
    try:
        await asyncio.gather(*(c.create_user(f"U{i}") for i, c in enumerate(clients)))
        await asyncio.gather(*(c.set_first(c.user_id, "warm") for c in clients))
        q.put("ready")
        await asyncio.to_thread(go.wait)
        lat: list[float] = []
        c0 = time.process_time()
        t0 = time.perf_counter()
        end = t0 + seconds

        errors: list[str] = []

        async def run(c: Client) -> None:
            i = 0
            while time.perf_counter() < end:
                s = time.perf_counter()
                try:
                    await c.set_first(c.user_id, f"tp{i}")
                except grpc.aio.AioRpcError as exc:  # counted, never hidden
                    errors.append(exc.code().name)
                    continue
                lat.append(time.perf_counter() - s)
                i += 1

        await asyncio.gather(*(run(c) for c in clients))
        q.put((len(lat), time.perf_counter() - t0, time.process_time() - c0, lat, errors))
    finally:
        for c in clients:
            if not multiplex:
                await c.close()
        for ch in shared.values():
            await ch.close()


def commit_worker(
    eps: list[str], users: int, seconds: float, first: int, multiplex: bool, go: Any, q: Any
) -> None:
    asyncio.run(_commit_load(eps, users, seconds, first, multiplex, go, q))


def _run_workers(
    net: LocalNetwork, target: Any, arg_sets: list[tuple[Any, ...]], on_start: Any = None
) -> tuple[list[Any], dict[str, float]]:
    """Start load processes, wait until each is ready, then time them together; return
    their results and the servers' CPU seconds spent meanwhile, per role."""
    ctx = mp.get_context("spawn")
    q, go = ctx.Queue(), ctx.Event()
    ws = [ctx.Process(target=target, args=(*a, go, q)) for a in arg_sets]
    for w in ws:
        w.start()
    for _ in ws:
        msg = q.get(timeout=300)
        assert msg == "ready", msg
    before = cpu_by_role(net)
    go.set()
    profilers = on_start() if on_start else []
    res = [q.get(timeout=300) for _ in ws]
    for p in profilers:
        p.wait()
    after = cpu_by_role(net)
    for w in ws:
        w.join()
    return res, {r: after[r] - before[r] for r in ROLES}


# ---------------------------------------------------------------- phases
async def bench_reads(
    net: LocalNetwork,
    n: int,
    procs: int,
    conc: int,
    seconds: float,
    profile: Path | None = None,
    sessions: bool = True,
) -> dict[str, float]:
    """Reads through a session (the client library's default: a MAC per read), signed reads
    (an Ed25519 signature each) and the empty call, on the same node, side by side.
    ``sessions=False`` (nodes that have none): the reads are the signed reads."""
    key = keys.generate_private_key()
    ep = net.user_endpoints()[0]
    pem = keys.private_key_to_pem(key)
    async with Client(ep, key) as c:
        await c.create_user("Bench", ["Read"], "Er")
        uid = c.user_id
        cs = await c.open_session() if sessions else None
        check = _health(c.channel)
        times: dict[str, list[float]] = {"read": [], "floor": []}
        if sessions:
            times["signed"] = []
        order = list(times)
        chunk = 100
        for start in range(0, 1100, chunk):  # one in flight; the three kinds interleaved
            # sealed and signed outside the timed calls, a chunk at a time (within the skew)
            reqs = {
                "read": iter(_session_gets(cs, uid, chunk) if cs else _signed_gets(pem, uid, chunk))
            }
            if cs:
                reqs["signed"] = iter(_signed_gets(pem, uid, chunk))
            for i in range(start, start + chunk):
                # each kind goes first, second and third equally often: the first call
                # after the client's own work is slower, whichever kind it is
                k = i % len(order)
                for kind in order[k:] + order[:k]:
                    req = next(reqs[kind]) if kind in reqs else None
                    call = check if kind == "floor" else c.stub.GetUser
                    t0 = time.perf_counter()
                    await call(req)
                    if i >= 100:
                        times[kind].append(time.perf_counter() - t0)
        lat, flo, signed = times["read"], times["floor"], times.get("signed")
    out: dict[str, float] = {
        "read_p50_ms": pct(lat, 50) * 1000,
        "read_p99_ms": pct(lat, 99) * 1000,
        "floor_p50_ms": pct(flo, 50) * 1000,
        "floor_p99_ms": pct(flo, 99) * 1000,
        "read_clients": procs * conc,
    }
    if signed is not None:
        out["signed_read_p50_ms"] = pct(signed, 50) * 1000
        out["signed_read_p99_ms"] = pct(signed, 99) * 1000
    # each mode twice, in mirrored order (read, signed, floor, floor, signed, read), half
    # the time each: a drift of the machine's load over the phase weighs on all alike
    per = n // procs // 2
    modes = READ_MODES if sessions else ("signed_read", "floor")
    done = {m: 0 for m in modes}
    wall = {m: 0.0 for m in modes}
    user_cpu = {m: 0.0 for m in modes}
    client_cpu = {m: 0.0 for m in modes}
    for rnd, mode in enumerate([*modes, *reversed(modes)]):
        where = profile / f"{mode}-{rnd}" if profile else None
        res, cpu = _run_workers(
            net,
            read_worker,
            [(ep, pem, uid, per, conc, mode, seconds / 2) for _ in range(procs)],
            lambda w=where: start_profiles(net, w, seconds / 2, ("user",)) if w else [],
        )
        done[mode] += sum(r[0] for r in res)
        wall[mode] += max(r[1] for r in res)
        user_cpu[mode] += cpu["user"]
        client_cpu[mode] += sum(r[2] for r in res)
    for mode in modes:
        name = mode if sessions else mode.removeprefix("signed_")  # no sessions: reads signed
        out[f"{name}_per_s"] = done[mode] / wall[mode]
        out[f"{name}_user_cpu_us"] = user_cpu[mode] / done[mode] * 1e6
        out[f"{name}_client_cpu_us"] = client_cpu[mode] / done[mode] * 1e6
    return ratios(out)


def ratios(m: dict[str, Any]) -> dict[str, Any]:
    """The read figures against the empty call's, same run."""
    m["read_ratio"] = m["read_p50_ms"] / m["floor_p50_ms"]
    m["read_rate_ratio"] = m["read_per_s"] / m["floor_per_s"]
    if "signed_read_p50_ms" in m:
        m["signed_read_ratio"] = m["signed_read_p50_ms"] / m["floor_p50_ms"]
        m["signed_read_rate_ratio"] = m["signed_read_per_s"] / m["floor_per_s"]
    return m


# One commit's nested spans at 1 in flight, outermost first, as each node's own histograms
# time them: (role, histogram, its method label or "", what it covers).
SPANS = (
    ("user", "beco_rpc_latency_seconds", "UpdateFirstName", "origin user node: the client's call"),
    ("user", "beco_forward_seconds", "", "origin: its ProposeBatch call, sealing to outcomes"),
    ("validator", "beco_rpc_latency_seconds", "validator.ProposeBatch", "validator: ProposeBatch"),
    ("validator", "beco_quorum_wait_seconds", "", "validator: vote round, fan-out to quorum"),
    ("user", "beco_rpc_latency_seconds", "user.VoteBatch", "a voter: VoteBatch (mean)"),
    ("validator", "beco_validator_commit_seconds", "", "validator: its CommitBatch call"),
    ("sst", "beco_rpc_latency_seconds", "sst.CommitBatch", "SST: CommitBatch"),
    ("sst", "beco_commit_seconds", "", "SST: store commit (queue + PostgreSQL transaction)"),
    ("user", "beco_rpc_latency_seconds", "user.ApplyBatch", "a user node: ApplyBatch (mean)"),
)
Histograms = dict[tuple[str, str, str], tuple[float, float]]  # (role, name, method) -> sum, count
BATCH_KEY = ("validator", "beco_batch_size", "")  # proposals per vote round


def scrape(net: LocalNetwork) -> Histograms:
    """Every node's histogram sums and counts, added up per role."""
    out: Histograms = {}
    for n in net.nodes.values():
        url = f"http://127.0.0.1:{n.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        for fam in text_string_to_metric_families(text):
            if fam.type != "histogram":
                continue
            for smp in fam.samples:
                kind = smp.name.removeprefix(fam.name)
                if kind not in ("_sum", "_count"):
                    continue
                key = (n.role, fam.name, smp.labels.get("method", ""))
                total, count = out.get(key, (0.0, 0.0))
                if kind == "_sum":
                    out[key] = (total + smp.value, count)
                else:
                    out[key] = (total, count + smp.value)
    return out


def span_means(before: Histograms, after: Histograms) -> dict[str, float]:
    """Mean ms of each of SPANS between two scrapes (absent: not observed)."""
    out: dict[str, float] = {}
    for role, name, method, what in SPANS:
        s1, c1 = after.get((role, name, method), (0.0, 0.0))
        s0, c0 = before.get((role, name, method), (0.0, 0.0))
        if c1 > c0:
            out[what] = (s1 - s0) / (c1 - c0) * 1000
    return out


async def commit_latency(net: LocalNetwork, n: int, multiplex: bool = False) -> dict[str, Any]:
    ep = net.user_endpoints()[0]
    async with Client(ep, keys.generate_private_key(), multiplex=multiplex) as c:
        await c.create_user("Lat")
        for i in range(20):  # also lets a multiplexed client's stream open
            await c.set_first(c.user_id, f"warm{i}")
        lat: list[float] = []
        before = await asyncio.to_thread(scrape, net)
        cpu0, wall0 = cpu_by_role(net), time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            await c.set_first(c.user_id, f"lat{i}")
            lat.append(time.perf_counter() - t0)
        cpu1, wall = cpu_by_role(net), time.perf_counter() - wall0
        spans = span_means(before, await asyncio.to_thread(scrape, net))
    # A batch of one: what a commit costs when nothing shares the per-batch work.
    cpu = {role: (cpu1[role] - cpu0[role]) * 1000 / n for role in cpu1}
    server = sum(cpu.values())
    return {
        "commit1_p50_ms": pct(lat, 50) * 1000,
        "commit1_p99_ms": pct(lat, 99) * 1000,
        "commit1_mean_ms": sum(lat) / len(lat) * 1000,
        "commit1_spans_ms": spans,
        "commit1_cpu_ms": cpu,
        "commit1_server_cpu_ms": server,
        "commit1_cores": server * n / 1000 / wall,  # server CPU / wall time
    }


def commit_load(
    net: LocalNetwork,
    users: int,
    procs: int,
    seconds: float,
    profile: Path | None = None,
    multiplex: bool = False,
) -> dict[str, Any]:
    eps = net.user_endpoints()
    hist: list[Histograms] = []

    def on_start() -> list[subprocess.Popen[bytes]]:
        hist.append(scrape(net))  # the load starts now: its batches from here
        return start_profiles(net, profile, seconds) if profile else []

    res, cpu = _run_workers(
        net,
        commit_worker,
        [(eps, users // procs, seconds, i, multiplex) for i in range(procs)],
        on_start,
    )
    s1, c1 = scrape(net).get(BATCH_KEY, (0.0, 0.0))
    s0, c0 = hist[0].get(BATCH_KEY, (0.0, 0.0))
    total = sum(r[0] for r in res)
    lat = [x for r in res for x in r[3]]
    out: dict[str, Any] = {
        "errors": sum(len(r[4]) for r in res),
        "commits_per_s": total / max(r[1] for r in res),
        "commits": total,
        "load_p50_ms": pct(lat, 50) * 1000,
        "load_p99_ms": pct(lat, 99) * 1000,
        "cpu_ms": {r: cpu[r] / total * 1000 for r in ROLES},
        "client_cpu_ms": sum(r[2] for r in res) / total * 1000,
        "batch_mean": (s1 - s0) / (c1 - c0) if c1 > c0 else None,  # None: no vote rounds
    }
    out["server_cpu_ms"] = sum(out["cpu_ms"].values())
    return out


def verify_costs(n: int = 300) -> dict[str, float]:
    """µs per Ed25519 verification and signature: with the nodes' backend (``keys``:
    libsodium through PyNaCl) and with OpenSSL through ``cryptography``, same run. Distinct
    messages, so ``keys.verify``'s cache of verified signatures never answers."""
    key = keys.generate_private_key()
    pub = keys.public_key_bytes(key)
    msgs = [os.urandom(128) for _ in range(n)]
    t0 = time.perf_counter()
    sigs = [keys.sign(key, m) for m in msgs]
    t1 = time.perf_counter()
    for m, sig in zip(msgs, sigs, strict=True):
        assert keys.verify(pub, sig, m)
    t2 = time.perf_counter()
    for m in msgs:
        key.sign(m)
    t3 = time.perf_counter()
    openssl = Ed25519PublicKey.from_public_bytes(pub)
    for m, sig in zip(msgs, sigs, strict=True):
        openssl.verify(sig, m)
    t4 = time.perf_counter()
    us = 1e6 / n
    return {
        "sign_us": (t1 - t0) * us,
        "verify_us": (t2 - t1) * us,
        "openssl_sign_us": (t3 - t2) * us,
        "openssl_verify_us": (t4 - t3) * us,
    }


async def one_network(
    tmp: Path, per_zone: int, ns: argparse.Namespace, full: bool, earlier: Path | None = None
) -> dict[str, Any]:
    """One network's phases. ``earlier``: the ``node/`` of an earlier revision, which the
    node processes run instead of this one's (unary clients only; signed reads when it has
    no sessions)."""
    n_users = 3 * per_zone
    env = {"BECO_LOG_LEVEL": "WARNING"}
    if earlier is not None:
        env["PYTHONPATH"] = str(earlier)
    net = LocalNetwork(
        tmp / f"{'before' if earlier else 'net'}{n_users}",
        nodes_per_zone=per_zone,
        base_port=free_base_port(n_users),
        extra_env=env,
    )
    await net.up()
    r: dict[str, Any] = {"user_nodes": n_users}
    try:
        if full:
            rprof = Path(ns.profile) / "reads" if ns.profile and not earlier else None
            sessions = await has_sessions(net)
            r |= await bench_reads(
                net, ns.reads, ns.read_procs, ns.read_concurrency, ns.seconds, rprof, sessions
            )
            if rprof is not None:
                print_profiles(rprof)
            print(f"reads: {r}", flush=True)
            r |= await commit_latency(net, ns.latency_commits)
            if earlier is None:  # the same messages with no work, while this network idles
                n = max(ns.latency_commits, 500)
                r["commit1_floor"] = await asyncio.to_thread(commit_floor.measure, n)
                r["commit1_floor_db"] = await asyncio.to_thread(commit_floor.measure, n, net.dsn)
        prof = (
            Path(ns.profile) / f"{n_users}-nodes" if ns.profile and full and not earlier else None
        )
        r |= commit_load(net, ns.commit_users, ns.commit_procs, ns.seconds, prof)
        if prof is not None:
            print_profiles(prof)
        print(f"commits ({n_users} user nodes): {r}", flush=True)
        if full and earlier is None:  # the same, clients on one Identity/Calls stream per node
            mux = await commit_latency(net, ns.latency_commits, multiplex=True)
            mux |= commit_load(net, ns.commit_users, ns.commit_procs, ns.seconds, multiplex=True)
            r["multiplexed"] = mux
            print(f"commits, multiplexed clients: {mux}", flush=True)
            r["writers"] = [{"writers": ns.commit_users} | mux]
            for w in ns.writers:  # the same, more writers in flight: bigger vote rounds
                more = commit_load(net, w, ns.commit_procs, ns.seconds, multiplex=True)
                r["writers"].append({"writers": w} | more)
                print(f"commits, {w} writers (multiplexed): {more}", flush=True)
    finally:
        await net.down()
    return r


def round_fit(rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(ms per round, ms per change): server CPU per commit = change + round / batch,
    fitted by least squares over load runs with different batch sizes."""
    used = [r for r in rows if r.get("batch_mean")]
    try:
        fit = statistics.linear_regression(
            [1 / r["batch_mean"] for r in used], [r["server_cpu_ms"] for r in used]
        )
    except statistics.StatisticsError:  # fewer than two rows, or one batch size only
        return None
    return fit.slope, fit.intercept


BY_ROLE = "(user nodes / validator / SST / PostgreSQL)"


def by_role(total: float | None, cpu: dict[str, float] | None) -> str:
    """A CPU-per-commit cell: the total, then the roles in ``BY_ROLE``'s order."""
    if total is None or not cpu:
        return "-"
    roles = " / ".join(f"{cpu[r]:.2f}" for r in ("user", "validator", "sst", "postgres"))
    return f"{total:.2f} ms ({roles})"


def one_in_flight_cpu_row(m: dict[str, Any], b: dict[str, Any]) -> str:
    """Server CPU per commit at 1 in flight, by role (a batch of one each round)."""
    cells = [by_role(r.get("commit1_server_cpu_ms"), r.get("commit1_cpu_ms")) for r in (m, b)]
    return f"| server CPU per commit, 1 in flight {BY_ROLE} | {cells[0]} | {cells[1]} |"


def floor_rows(f: dict[str, Any] | None, db: dict[str, Any] | None) -> list[str]:
    """The commit path's messages on bare grpc.aio with no work (``commit_floor``), then the
    same with the SST's durable commit: what the "1 in flight" rows cost before any of
    BECO's own work."""
    if not f:
        return []
    roles = " / ".join(f"{f['cpu_ms'][r]:.2f}" for r in ("user", "validator", "sst"))
    rows = [
        "| &nbsp; floor: one commit's messages on bare grpc.aio, no work, 1 in flight "
        f"(`benchmarks/commit_floor.py`): p50 / p99 | {f['p50_ms']:.2f} / {f['p99_ms']:.2f} ms "
        "| - |",
        "| &nbsp; floor: its CPU per commit (user nodes / validator / SST) | "
        f"{f['server_cpu_ms']:.2f} ms ({roles}) | - |",
    ]
    if db:
        rows.append(
            "| &nbsp; floor with the SST's durable commit (a one-row INSERT, fsync on): "
            f"p50 / p99 | {db['p50_ms']:.2f} / {db['p99_ms']:.2f} ms | - |"
        )
    return rows


def multiplexed_rows(m: dict[str, Any] | None) -> list[str]:
    """The same load with each load process's clients on one ``Identity/Calls`` stream per
    node (``Client(multiplex=True)``): same network, same run, no earlier figures."""
    if not m:
        return []
    return [
        f"| clients multiplexed (`Identity/Calls`): commits/s | {m['commits_per_s']:.0f} | - |",
        f"| &nbsp; multiplexed: commit p50, 1 in flight | {m['commit1_p50_ms']:.2f} ms | - |",
        f"| &nbsp; multiplexed: server CPU per commit, 1 in flight | "
        f"{m['commit1_server_cpu_ms']:.2f} ms | - |",
        f"| &nbsp; multiplexed: commit p50 / p99 under load | {m['load_p50_ms']:.1f} / "
        f"{m['load_p99_ms']:.1f} ms | - |",
        f"| &nbsp; multiplexed: server CPU per commit {BY_ROLE} | "
        f"{by_role(m['server_cpu_ms'], m['cpu_ms'])} | - |",
        f"| &nbsp; multiplexed: load generator CPU per commit | {m['client_cpu_ms']:.2f} ms | - |",
        f"| &nbsp; multiplexed: writes that failed | {m['errors']} | - |",
    ]


def render(
    runs: list[dict[str, Any]], before: dict[str, Any] | None, ns: argparse.Namespace
) -> str:
    main = runs[0]
    b = (before or {}).get("runs", [{}])[0] if before else {}
    label = (before or {}).get("label", "before")

    def row(
        name: str, key: str, fmt: str, unit: str = "", src: dict[str, Any] | None = None
    ) -> str:
        now = (src or main).get(key)
        old = b.get(key) if src is None else None
        cell = (fmt.format(now) + unit) if now is not None else "-"
        prev = (fmt.format(old) + unit) if old is not None else "-"
        return f"| {name} | {cell} | {prev} |"

    cpu = main["cpu_ms"]
    bcpu = b.get("cpu_ms", {})
    lines = [
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, shared with other engineers' "
        f"work. Command: `make bench-network` (`python -m benchmarks.network`). Real processes: "
        "embedded PostgreSQL, SST, rendezvous, validator, 3 user nodes (zones a, b, c; quorum 2),"
        f" gRPC on loopback; load generators in {ns.commit_procs} separate processes on the same"
        f" cores, {ns.commit_users} users writing for {ns.seconds:g} s per phase. "
        f"Load average (1 min) at the start / end of the run: {ns.load0:.1f} / "
        f"{os.getloadavg()[0]:.1f}. Ed25519 here, same run: verify "
        f"{ns.crypto['verify_us']:.0f} µs, sign {ns.crypto['sign_us']:.0f} µs with libsodium "
        f"(`keys`, PyNaCl); {ns.crypto['openssl_verify_us']:.0f} µs and "
        f"{ns.crypto['openssl_sign_us']:.0f} µs with OpenSSL (`cryptography`). "
        f'Column "{label}": '
        + (before.get("note", "") if before else "no earlier run given")
        + ".",
        "",
        f"| measure | this run | {label} |",
        "|---|---|---|",
        row("commits/s under load (48 users writing)", "commits_per_s", "{:.0f}"),
        row("commit p50, 1 in flight", "commit1_p50_ms", "{:.2f}", " ms"),
        row("commit p99, 1 in flight", "commit1_p99_ms", "{:.2f}", " ms"),
        *floor_rows(main.get("commit1_floor"), main.get("commit1_floor_db")),
        one_in_flight_cpu_row(main, b),
        row(
            f"cores busy at 1 in flight (server CPU / wall time, of {os.cpu_count()})",
            "commit1_cores",
            "{:.2f}",
        ),
        row("commit p99 under load", "load_p99_ms", "{:.1f}", " ms"),
        row("commit p50 under load", "load_p50_ms", "{:.1f}", " ms"),
        row("**server CPU per commit** (all roles)", "server_cpu_ms", "{:.2f}", " ms"),
    ]
    for role in ("user", "validator", "sst", "postgres", "rendezvous"):
        now, old = cpu.get(role), bcpu.get(role)
        lines.append(
            f"| &nbsp; CPU per commit: {role}{' nodes (all)' if role == 'user' else ''} | "
            f"{now:.2f} ms | {'-' if old is None else f'{old:.2f} ms'} |"
        )
    lines += [
        row(
            "load generator CPU per commit (signing, client gRPC)", "client_cpu_ms", "{:.2f}", " ms"
        ),
        row("writes that failed under load (any status)", "errors", "{}"),
        *multiplexed_rows(main.get("multiplexed")),
        row("proposals per vote round under load (mean)", "batch_mean", "{:.1f}"),
        row("read p50 / empty-call p50, 1 in flight (ratio)", "read_ratio", "{:.2f}", "x"),
        row("read p50 (GetUser, session: a MAC)", "read_p50_ms", "{:.2f}", " ms"),
        row("read p99 (GetUser, session)", "read_p99_ms", "{:.2f}", " ms"),
        row(
            "signed read p50 (GetUser, an Ed25519 signature)", "signed_read_p50_ms", "{:.2f}", " ms"
        ),
        row("signed read p50 / empty-call p50 (ratio)", "signed_read_ratio", "{:.2f}", "x"),
        row(
            "floor: empty call p50 (Health.Check, same node, same run)",
            "floor_p50_ms",
            "{:.2f}",
            " ms",
        ),
        row("floor: empty call p99", "floor_p99_ms", "{:.2f}", " ms"),
        row(
            f"reads/s, session ({int(main.get('read_clients', 0))} in flight)",
            "read_per_s",
            "{:.0f}",
        ),
        row("signed reads/s, same load generator", "signed_read_per_s", "{:.0f}"),
        row("empty calls/s, same load generator", "floor_per_s", "{:.0f}"),
        row("reads/s / empty calls/s (ratio)", "read_rate_ratio", "{:.2f}"),
        row("user node CPU per read (session)", "read_user_cpu_us", "{:.0f}", " µs"),
        row("user node CPU per signed read", "signed_read_user_cpu_us", "{:.0f}", " µs"),
        row("user node CPU per empty call", "floor_user_cpu_us", "{:.0f}", " µs"),
        "",
        "Where one commit's time goes at 1 in flight (same run; each node's own histograms, "
        f"mean over the {ns.latency_commits} commits; spans nest, outermost first: the client "
        f"saw a mean of {main.get('commit1_mean_ms', 0):.2f} ms):",
        "",
        "| span | mean |",
        "|---|---|",
        *(f"| {what} | {ms:.2f} ms |" for what, ms in main.get("commit1_spans_ms", {}).items()),
    ]
    if main.get("writers"):
        lines += [
            "",
            "Commits/s against the number of writers (multiplexed clients, each writes its next "
            "change when the last is answered; the first network, same run, "
            f"{ns.seconds:g} s each):",
            "",
            "| writers | commits/s | server CPU per commit | load generator CPU per commit | "
            "proposals per vote round | p50 / p99 |",
            "|---|---|---|---|---|---|",
            *(
                f"| {w['writers']} | {w['commits_per_s']:.0f} | {w['server_cpu_ms']:.2f} ms | "
                f"{w['client_cpu_ms']:.2f} ms | {w['batch_mean']:.1f} | "
                f"{w['load_p50_ms']:.0f} / {w['load_p99_ms']:.0f} ms |"
                for w in main["writers"]
            ),
        ]
        fit = round_fit(main["writers"])
        if fit is not None:
            lines += [
                "",
                "A least-squares line through these rows, server CPU per commit against 1 / "
                f"proposals per round: {fit[0]:.1f} ms per vote round whatever its size, plus "
                f"{fit[1]:.2f} ms per change.",
            ]
    lines += [
        "",
        "Commits/s and server CPU per commit against the number of user nodes (same run, "
        "each network started fresh; quorum 2 / 4 / 6):",
        "",
        f"| user nodes | commits/s | server CPU per commit | of which user nodes | {label}: commits/s, CPU per commit |",
        "|---|---|---|---|---|",
    ]
    bruns = {r["user_nodes"]: r for r in (before or {}).get("runs", [])}
    for r in runs:
        o = bruns.get(r["user_nodes"])
        prev = f"{o['commits_per_s']:.0f}, {o['server_cpu_ms']:.2f} ms" if o else "-"
        lines.append(
            f"| {r['user_nodes']} | {r['commits_per_s']:.0f} | {r['server_cpu_ms']:.2f} ms | "
            f"{r['cpu_ms']['user']:.2f} ms | {prev} |"
        )
    return "\n".join(lines)


async def reads_only(ns: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="beco-bench-") as tmp:
        net = LocalNetwork(
            Path(tmp) / "net3",
            base_port=free_base_port(3),
            extra_env={"BECO_LOG_LEVEL": "WARNING"},
        )
        await net.up()
        try:
            rprof = Path(ns.profile) / "reads" if ns.profile else None
            r = await bench_reads(
                net, ns.reads, ns.read_procs, ns.read_concurrency, ns.seconds, rprof
            )
            if rprof is not None:
                print_profiles(rprof)
            return r | {"load_average": list(os.getloadavg())}
        finally:
            await net.down()


async def has_sessions(net: LocalNetwork) -> bool:
    """Whether the network's user nodes serve read sessions (an earlier revision may not)."""
    async with Client(net.user_endpoints()[0], keys.generate_private_key()) as c:
        try:
            await c.stub.OpenSession(pb.OpenSessionRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code() != grpc.StatusCode.UNIMPLEMENTED
    return True


def resolve_ref(rev: str) -> str:
    """``rev``'s short commit hash; ValueError naming it when it is no commit here."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "--verify", "-q", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise ValueError(f"--before-ref {rev!r} is no commit of this repository")
    return found.stdout.strip()


def checkout_node(rev: str, into: Path) -> tuple[Path, str]:
    """``rev``'s ``node/`` (the node code and its generated protobuf modules) under ``into``,
    from git; returns (its directory, the revision's short hash)."""
    short = resolve_ref(rev)
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", short, "node"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "node", short


async def main_async(
    ns: argparse.Namespace,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """This code's runs, and the earlier revision's (``--before-ref``, resolved in
    ``ns.before_hash``), one network each per scale; the earlier revision's first."""
    runs: list[dict[str, Any]] = []
    before: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="beco-bench-") as tmp:
        if ns.before_ref:
            code, _ = checkout_node(ns.before_hash, Path(tmp) / "before")
            for i, per_zone in enumerate(ns.scale):
                before.append(await one_network(Path(tmp), per_zone, ns, i == 0, code))
        for i, per_zone in enumerate(ns.scale):
            runs.append(await one_network(Path(tmp), per_zone, ns, full=i == 0))
    return runs, before


def report(
    runs: list[dict[str, Any]], earlier: list[dict[str, Any]], ns: argparse.Namespace
) -> None:
    before = json.loads(Path(ns.before).read_text()) if ns.before else None
    if earlier:
        before = {
            "label": f"before ({ns.before_hash})",
            "note": "the same benchmark, in this run and on this machine (its networks ran "
            f"first), with the node processes running the code of {ns.before_hash}"
            + (f" ({ns.before_why})" if ns.before_why else "")
            + "; where it has no read sessions its read rows are signed reads",
            "runs": earlier,
        }
    text = render(runs, before, ns) + "\n\n" + Path(ns.notes).read_text()
    print(text)
    if ns.save:
        saved = {
            "label": ns.label,
            "note": ns.note,
            "crypto": ns.crypto,
            "runs": runs,
            "before": earlier,
        }
        Path(ns.save).write_text(json.dumps(saved, indent=1) + "\n")
    if not ns.no_write:
        write_section("network", text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--reads", type=int, default=20000, help="signed in advance (at most)")
    p.add_argument("--read-procs", type=int, default=2)
    p.add_argument("--read-concurrency", type=int, default=16)
    p.add_argument("--latency-commits", type=int, default=200)
    p.add_argument("--commit-users", type=int, default=48)
    p.add_argument("--commit-procs", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument(
        "--writers",
        default="96,192,384",
        help="more writers (multiplexed) on the first network, after --commit-users; '' none",
    )
    p.add_argument("--scale", default="1,2,3", help="user nodes per zone, one network each")
    p.add_argument("--before", help="JSON of an earlier run (--save) shown beside this one")
    p.add_argument(
        "--before-ref",
        default="",
        help="also run the nodes of this git revision, same run; shown beside this code",
    )
    p.add_argument("--before-why", default="", help="what that revision is, for the header")
    p.add_argument("--save", help="write this run's figures as JSON")
    p.add_argument("--label", default="")
    p.add_argument("--note", default="")
    p.add_argument("--notes", default=str(ROOT / "benchmarks" / "network_notes.md"))
    p.add_argument("--profile", help="py-spy each role during the commit load; stacks here")
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--reads-only",
        action="store_true",
        help="only the read phase, on one network of 3 user nodes; prints, writes nothing",
    )
    ns = p.parse_args(argv)
    if ns.reads_only:
        print(json.dumps(asyncio.run(reads_only(ns)), indent=1))
        return 0
    ns.scale = [int(x) for x in ns.scale.split(",")]
    ns.writers = [int(x) for x in ns.writers.split(",") if x]
    if ns.before_ref:
        try:  # a typo stops here, before any network starts
            ns.before_hash = resolve_ref(ns.before_ref)
        except ValueError as exc:
            p.error(str(exc))
    ns.load0 = os.getloadavg()[0]
    ns.crypto = verify_costs()
    runs, before = asyncio.run(main_async(ns))
    report(runs, before, ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
