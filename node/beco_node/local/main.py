"""``beco-local up | down``: run a whole BECO network on this machine.

``up`` generates keys and a membership once (kept in ``--state-dir``), starts
PostgreSQL (embedded, or ``--database-url``), the SST, rendezvous, validator
and user nodes as real processes, prints the endpoints and a CLI example, and
runs until Ctrl-C or ``beco-local down`` (SIGTERM to the ``up`` process), then
stops everything cleanly. While it runs it supervises: a node or the embedded
PostgreSQL that dies is restarted within about a second. Committed changes survive a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from beco_node.local.network import LocalNetwork
from beco_node.pg.binaries import PostgresError


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="beco-local", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the network and run until Ctrl-C")
    up.add_argument("--zones", default=os.environ.get("BECO_LOCAL_ZONES", "a,b,c"))
    up.add_argument(
        "--nodes-per-zone", type=int, default=int(os.environ.get("BECO_LOCAL_NODES_PER_ZONE", "1"))
    )
    up.add_argument("--state-dir", default=os.environ.get("BECO_LOCAL_STATE_DIR", "./.state/local"))
    up.add_argument("--database-url", default=os.environ.get("BECO_DATABASE_URL") or None)
    up.add_argument("--base-port", type=int, default=9001)
    up.add_argument("--quorum", type=int, default=None, help="default: the BFT default quorum")
    down = sub.add_parser("down", help="stop a running `beco-local up`")
    down.add_argument(
        "--state-dir", default=os.environ.get("BECO_LOCAL_STATE_DIR", "./.state/local")
    )
    return p.parse_args(argv)


def _print_banner(net: LocalNetwork) -> None:
    users = net.user_endpoints()
    print("BECO local network is up (plaintext gRPC on loopback: --insecure, development only)")
    print(f"  state dir : {net.state_dir}")
    print(f"  database  : {net.dsn.split('@')[-1]}")
    for n in net.nodes.values():
        print(
            f"  {n.role:<10} {n.name:<12} {n.address:<16} metrics http://127.0.0.1:{n.metrics_port}/metrics"
        )
    ep = users[0]
    b = "beco" if ep.endswith(":9001") else f"beco --endpoint {ep}"
    ms = net.membership_path
    if ms.resolve() != Path(".state/local/membership.json").resolve():
        b += f" --membership {ms}"
    print("\nTry it (another terminal, from this directory):")
    print("  beco keygen --out alice.key; beco keygen --out bob.key")
    print("  ALICE=$(beco whoami --key alice.key); BOB=$(beco whoami --key bob.key)")
    print(f"  {b} --key alice.key user create --first Alice --last Smith")
    print(f"  {b} --key bob.key user create --first Bob")
    print(f"  {b} --key bob.key set first --user $ALICE Mallory   # refused: not an editor")
    print(f"  {b} --key alice.key grant first $BOB editor")
    print(f"  {b} --key bob.key set first --user $ALICE Alicia    # now allowed")
    print(f"  {b} --key alice.key proof inclusion                 # verified offline")
    print("\nCtrl-C or `beco-local down` stops the network.", flush=True)


async def _up(ns: argparse.Namespace) -> int:
    net = LocalNetwork(
        ns.state_path,
        zones=[z for z in ns.zones.split(",") if z],
        nodes_per_zone=ns.nodes_per_zone,
        base_port=ns.base_port,
        database_url=ns.database_url,
        quorum=ns.quorum,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if _running_pid(ns.state_path) is not None:
        print(f"beco-local: a network is already running in {ns.state_path}", file=sys.stderr)
        return 1
    try:
        net.prepare()
    except Exception as exc:
        print(f"beco-local: cannot prepare {ns.state_path}: {exc}", file=sys.stderr)
        return 1
    net.write_pid()
    try:
        try:
            await net.up()
        except Exception as exc:
            print(f"beco-local: cannot start the network: {exc}", file=sys.stderr)
            return 1
        _print_banner(net)
        while not stop.is_set():
            try:
                for name in await net.restart_dead():
                    print(f"beco-local: {name} exited; restarted it", file=sys.stderr, flush=True)
            except PostgresError as exc:
                print(f"beco-local: cannot restart PostgreSQL yet: {exc}", file=sys.stderr)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
        print("\nbeco-local: stopping...", flush=True)
        return 0
    finally:
        await net.down()
        net.clear_pid()
        print("beco-local: stopped", flush=True)


def _running_pid(state_dir: Path) -> int | None:
    try:
        pid = int(json.loads((state_dir / "local.pid").read_text())["pid"])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError):
        return None
    return pid


def _down(ns: argparse.Namespace) -> int:
    pidfile = Path(ns.state_dir) / "local.pid"
    try:
        pid = int(json.loads(pidfile.read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError):
        print(f"beco-local: no running network in {ns.state_dir}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        print("beco-local: the network was not running (stale pid file removed)")
        return 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("beco-local: stopped")
            return 0
        time.sleep(0.2)
    print("beco-local: still running after 60 s", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    ns = _args(argv)
    if ns.cmd == "up":
        ns.state_path = Path(ns.state_dir).resolve()
        return asyncio.run(_up(ns))
    return _down(ns)


if __name__ == "__main__":
    sys.exit(main())
