"""Node memory vs commits: RSS of every node of the local network while writers commit.

    python -m benchmarks.memory [--commits 3000] [--users 64] [--out docs/benchmarks-memory.md]

Real processes (embedded PostgreSQL, SST, rendezvous, validator, 3 user nodes). Every
user updates its own name concurrently, through the normal commit path; the RSS
of each node (``VmRSS``) is sampled after every tenth of the commits. With bounded caches
the validator's and the SST's RSS level off; a user node grows only with the number of
users it holds (a full replica), not with commits.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path

from beco_node import keys
from beco_node.client import Client
from beco_node.local.network import LocalNetwork, free_base_port

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def sample(net: LocalNetwork) -> dict[str, float]:
    out = {n.name: rss_mb(n.proc.pid) for n in net.nodes.values() if n.proc is not None}
    pg = net.postgres
    if pg is not None and pg.pid is not None:
        out["postgres (postmaster)"] = rss_mb(pg.pid)
    return out


async def run(ns: argparse.Namespace) -> str:
    state = Path(tempfile.mkdtemp(prefix="beco-mem-"))
    net = LocalNetwork(state, base_port=free_base_port())
    await net.up()
    try:
        eps = net.user_endpoints()
        users = [Client(eps[i % len(eps)], keys.generate_private_key()) for i in range(ns.users)]
        await asyncio.gather(*(c.create_user(f"U{i}") for i, c in enumerate(users)))
        samples: list[tuple[int, dict[str, float]]] = [(len(users), sample(net))]
        done = len(users)
        step = max(1, ns.commits // 10)
        t0 = time.perf_counter()
        while done < ns.commits:
            batch = min(step, ns.commits - done)

            async def write(c: Client, n: int) -> None:
                for i in range(n):
                    await c.set_first(c.user_id, f"N{i}")

            per = max(1, batch // len(users))
            await asyncio.gather(*(write(c, per) for c in users))
            done += per * len(users)
            samples.append((done, sample(net)))
        wall = time.perf_counter() - t0
        for c in users:
            await c.close()
    finally:
        await net.down()
        shutil.rmtree(state, ignore_errors=True)
    names = list(samples[0][1])
    lines = [
        "# Node memory vs commits",
        "",
        f"`python -m benchmarks.memory --commits {ns.commits} --users {ns.users}` on "
        f"{platform.machine()}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}: "
        f"{len(users)} users, {done} commits in {wall:.0f} s. RSS in MB.",
        "",
        "| commits | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for n, s in samples:
        lines.append(
            f"| {n:,} | " + " | ".join(f"{s.get(k, float('nan')):.0f}" for k in names) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commits", type=int, default=3000)
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-memory.md"))
    ns = p.parse_args(argv)
    text = asyncio.run(run(ns))
    Path(ns.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
