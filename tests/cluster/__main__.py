"""``python -m tests.cluster up|down|env``: a control plane for manual use;
``real-up|real-down|real-env``: the real cluster (tests/cluster/real.py, make cluster-up).

``up`` starts a plane in ``--workdir`` (default ``.state/cluster``) and returns, leaving it
running (or, with ``--foreground``, runs until Ctrl-C); ``down`` stops it; ``env`` prints shell
exports (KUBECONFIG, BECO_CONTROLPLANE_BIN, PATH) for ``eval "$(python -m tests.cluster env)"``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path

from .binaries import REPO_ROOT, BinariesMissing
from .plane import ControlPlane, ControlPlaneError
from .real import RealCluster

DEFAULT_WORKDIR = REPO_ROOT / ".state" / "cluster"
REAL_WORKDIR = REPO_ROOT / ".state" / "real-cluster"


def _up(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir
    if (workdir / "state.json").exists():
        print(f"a control plane is already up in {workdir} (run `down` first)", file=sys.stderr)
        return 1
    zones = tuple(z for z in args.zones.split(",") if z)
    cp = ControlPlane(workdir, zones, args.nodes_per_zone, die_with_parent=args.foreground)
    try:
        cp.start()
    except (BinariesMissing, ControlPlaneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"control plane up: {cp.api_url}")
    print(f"kubeconfig: {cp.kubeconfig}")
    print(f"logs: {workdir / 'logs'}")
    if not args.foreground:
        cp.detach()
        print(f"stop it with: python -m tests.cluster down --workdir {shlex.quote(str(workdir))}")
        return 0
    print("running; Ctrl-C to stop")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cp.stop()
    return 0


def _down(args: argparse.Namespace) -> int:
    try:
        pids = ControlPlane.stop_detached(args.workdir)
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"stopped {len(pids)} processes" if pids else f"no control plane up in {args.workdir}")
    return 0


def _env(args: argparse.Namespace) -> int:
    path: Path = args.workdir / "state.json"
    if not path.exists():
        print(f"no control plane up in {args.workdir}", file=sys.stderr)
        return 1
    state = json.loads(path.read_text())
    print(f"export KUBECONFIG={shlex.quote(state['kubeconfig'])}")
    print(f"export BECO_CONTROLPLANE_BIN={shlex.quote(state['bin_dir'])}")
    print(f'export PATH={shlex.quote(state["bin_dir"])}:"$PATH"')
    return 0


def _real_up(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir
    if (workdir / "state.json").exists():
        print(f"a real cluster is already up in {workdir} (run `real-down` first)", file=sys.stderr)
        return 1
    zones = tuple(z for z in args.zones.split(",") if z)
    images = tuple(i for i in args.images.split(",") if i)
    rc = RealCluster(workdir, zones, extra_images=images, die_with_parent=False)
    try:
        rc.start()
    except (BinariesMissing, ControlPlaneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rc.detach()
    print(f"real cluster up: {rc.plane.api_url} (nodes {', '.join(rc.node_names)})")
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in rc.timings.items()))
    print(f"kubeconfig: {rc.kubeconfig}")
    print(f"stop it with: python -m tests.cluster real-down --workdir {shlex.quote(str(workdir))}")
    return 0


def _real_down(args: argparse.Namespace) -> int:
    try:
        done = RealCluster.stop_detached(args.workdir)
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("real cluster stopped" if done else f"no real cluster up in {args.workdir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "env", "real-up", "real-down"):
        p = sub.add_parser(name)
        real = name.startswith("real-")
        p.add_argument("--workdir", type=Path, default=REAL_WORKDIR if real else DEFAULT_WORKDIR)
        if name == "real-up":
            p.add_argument("--zones", default="a,b,c", help="comma-separated zone names")
            p.add_argument(
                "--images", default="", help="extra local images to load, comma-separated"
            )
        if name == "up":
            p.add_argument("--zones", default="a,b,c", help="comma-separated zone names")
            p.add_argument("--nodes-per-zone", type=int, default=2)
            p.add_argument("--foreground", action="store_true", help="run until Ctrl-C")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.absolute()
    handlers = {"up": _up, "down": _down, "env": _env, "real-up": _real_up, "real-down": _real_down}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
