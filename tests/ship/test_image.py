"""The container image: its properties, and a tiny BECO network whose every node is a container.

Runs with podman (runc; the limits this machine allows) on the image `make image` built
(env BECO_IMAGE). Keys and membership come from beco-local's LocalNetwork, PostgreSQL is the
embedded one on the host; each node runs `beco-node --role ...` in its own container on the
host network (loopback only). A client on the host creates a user and commits an update
through the containers: user node -> validator -> user nodes' votes -> SST -> Postgres.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest

from .conftest import need
from .prom import metrics_text

pytestmark = pytest.mark.image
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


@pytest.fixture(scope="module")
def image() -> str:
    img = os.environ.get("BECO_IMAGE", "")
    if not img:
        need("BECO_IMAGE", "build it with `make image` (make test and make test-image set it)")
    if subprocess.run(["podman", "image", "exists", img], check=False).returncode != 0:
        need(img, "run `make image`")
    return img


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    runtime = os.environ.get("BECO_OCI_RUNTIME", "runc")
    return subprocess.run(
        ["podman", "--runtime", runtime, *args], capture_output=True, text=True, check=check
    )


def run(image: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return podman("run", "--rm", *LIMITS, image, *cmd, check=False)


def test_image_is_slim_non_root_and_has_both_entrypoints(image: str) -> None:
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    assert info["Config"]["User"] == "10001:10001"
    who = run(image, "id", "-u")
    assert who.stdout.strip() == "10001", who.stderr
    tools = run(image, "sh", "-c", "for t in gcc cc g++ make pip; do command -v $t; done; true")
    assert tools.stdout.strip() == "", f"build tools in the final image: {tools.stdout}"
    for entry in ("beco-node", "beco-operator", "beco"):
        out = run(image, entry, "--help")
        assert out.returncode == 0, f"{entry}: {out.stderr}"
    # the dependencies are exactly the lock's
    frozen = run(
        image, "python3", "-c", "import importlib.metadata as m; print(m.version('grpcio'))"
    )
    assert frozen.stdout.strip() == "1.85.1", frozen.stderr


@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_network_of_containers_commits_an_update(image: str, tmp_path: Path) -> None:
    from beco_node import keys
    from beco_node.client import Client
    from beco_node.local.network import LocalNetwork, free_base_port

    net = LocalNetwork(tmp_path / "net", base_port=free_base_port())
    ms = net.prepare()
    dsn = await net.start_postgres()
    # the containers' user (10001) reads the keys (mode 0600), as in a pod with fsGroup
    for key in (net.state_dir / "keys").glob("*.key"):
        os.chown(key, 10001, 10001)
    tag = uuid.uuid4().hex[:8]
    names: list[str] = []
    try:
        for name in net.order():
            n = net.nodes[name]
            cname = f"beco-test-{name}-{tag}"
            env = ["-e", f"BECO_DATABASE_URL={dsn}"] if n.role == "sst" else []
            podman(
                "run", "-d", "--name", cname, "--network", "host", *LIMITS, *env,
                "-v", f"{net.state_dir}:/state:ro", image,
                "beco-node", "--role", n.role, "--membership", "/state/membership.json",
                "--key-file", f"/state/keys/{name}.key",
                "--metrics-listen", f"127.0.0.1:{n.metrics_port}", "--insecure",
            )  # fmt: skip
            names.append(cname)
        try:
            await net.wait_healthy(limit_s=90)
        except Exception:
            logs = {c: podman("logs", "--tail", "20", c, check=False).stderr for c in names}
            raise AssertionError(f"containers not healthy: {logs}") from None
        users = net.user_endpoints()
        assert len(users) == 3 and {m.role for m in ms.members} == {
            "rendezvous",
            "validator",
            "user",
            "sst",
        }
        alice = keys.generate_private_key()
        async with Client(users[0], alice) as c:
            # the validator may need a moment to find the user nodes through the rendezvous
            for attempt in range(50):
                try:
                    await c.create_user("Alice", [], "Liddell")
                    break
                except grpc.aio.AioRpcError:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.2)
            r = await c.set_first(c.user_id, "Alicia")
            assert r.commit.tree_head.tree_size >= 2
        # another zone's container applied the committed change (it is told after the commit)
        async with Client(users[2], alice) as c:
            for _ in range(50):
                u = await c.get_user(c.user_id)
                if list(u.first_name.values) == ["Alicia"]:
                    break
                await asyncio.sleep(0.2)
            assert list(u.first_name.values) == ["Alicia"]
            assert list(u.last_name.values) == ["Liddell"]
        for name in net.order():
            assert "beco_rpc_requests_total" in metrics_text(net.nodes[name].metrics_port)
        for c in names:
            state = podman("inspect", "-f", "{{.State.Running}}", c).stdout.strip()
            assert state == "true", f"{c} stopped"
    finally:
        for c in names:
            podman("rm", "-f", "-t", "5", c, check=False)
        await net.stop_postgres()
