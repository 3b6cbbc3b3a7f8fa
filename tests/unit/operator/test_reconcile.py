"""The reconcile phases end to end against an in-memory API (no cluster), with an injected
clock and pod-metrics reader: the scale-down keeps departing pods until every remaining pod
reports the new membership generation (issue 8, item 8)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from beco_node import membership
from beco_operator import keyring, names
from beco_operator.config import OperatorConfig
from beco_operator.kube import path
from beco_operator.names import Obj
from beco_operator.reconcile import Caps, Reconciler

from .conftest import NOW

NS = "ns"


def _selects(selector: str | None, obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in (selector or "").split(","):
        if term:
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
    return True


class FakeKube:
    """The API calls the reconciler makes, over a dict; StatefulSets get Ready pods at once
    (as kwok does), Deployments one pod."""

    def __init__(self, clock: Any) -> None:
        self.objs: dict[str, Obj] = {}
        self.clock = clock
        self.uid = 0

    def _url(self, obj: Obj) -> str:
        return path(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])

    def _stamp(self, obj: Obj) -> Obj:
        self.uid += 1
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{self.uid}")
        meta.setdefault("creationTimestamp", self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"))
        return obj

    async def get(self, url: str) -> Obj | None:
        o = self.objs.get(url)
        return copy.deepcopy(o) if o is not None else None

    async def list(self, url: str, selector: str | None = None) -> list[Obj]:
        return [
            copy.deepcopy(o)
            for u, o in self.objs.items()
            if u.rsplit("/", 1)[0] == url and _selects(selector, o)
        ]

    async def create(self, obj: Obj) -> Obj | None:
        if obj["kind"] == "Event":
            return obj
        url = self._url(obj)
        if url in self.objs:
            return None
        self.objs[url] = self._stamp(copy.deepcopy(obj))
        self._sync()
        return copy.deepcopy(self.objs[url])

    async def apply(self, obj: Obj) -> Obj:
        url = self._url(obj)
        old = self.objs.get(url)
        new = copy.deepcopy(obj)
        if old is not None:
            new["metadata"]["uid"] = old["metadata"]["uid"]
            new["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        self.objs[url] = self._stamp(new)
        self._sync()
        return copy.deepcopy(new)

    async def replace(self, obj: Obj) -> Obj:
        self.objs[self._url(obj)] = copy.deepcopy(obj)
        return obj

    async def delete(self, kind: str, namespace: str, name: str, *, uid: str | None = None) -> bool:
        removed = self.objs.pop(path(kind, namespace, name), None) is not None
        self._sync()
        return removed

    async def patch_status(self, kind: str, namespace: str, name: str, status_obj: Obj) -> None:
        obj = self.objs[path(kind, namespace, name)]
        obj["status"] = {k: v for k, v in status_obj.items() if v is not None}

    def _sync(self) -> None:
        """The StatefulSet controller: pods 0..replicas-1, ready; others removed."""
        for o in list(self.objs.values()):
            if o["kind"] not in ("StatefulSet", "Deployment"):
                continue
            replicas = int(o["spec"]["replicas"])
            tmpl = o["spec"]["template"]
            base = o["metadata"]["name"]
            want = (
                {f"{base}-{i}" for i in range(replicas)}
                if o["kind"] == "StatefulSet"
                else {f"{base}-x"}
            )
            for pod_name in want:
                url = path("Pod", NS, pod_name)
                if url not in self.objs:
                    pod = {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": pod_name,
                            "namespace": NS,
                            "labels": dict(tmpl["metadata"]["labels"]),
                            "annotations": dict(tmpl["metadata"].get("annotations") or {}),
                        },
                        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
                    }
                    self.objs[url] = self._stamp(pod)
            if o["kind"] == "StatefulSet":
                for i in range(replicas, replicas + 10):
                    self.objs.pop(path("Pod", NS, f"{base}-{i}"), None)


class Generations:
    """What each pod's beco_membership_generation says; set by the test."""

    def __init__(self) -> None:
        self.value: dict[str, int | None] = {}

    async def generations(self, pods: Sequence[Mapping[str, Any]]) -> dict[str, int | None]:
        return {p["metadata"]["name"]: self.value.get(p["metadata"]["name"]) for p in pods}

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def network(per_zone: int) -> Obj:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "demo", "namespace": NS, "uid": "net-uid", "generation": 1},
        "spec": {"zones": ["a", "b", "c"], "userNodes": {"perZone": per_zone}},
    }


CAPS = Caps(pod_monitor=False, zones_with_nodes=frozenset({"a", "b", "c"}))


async def converge(r: Reconciler, kube: FakeKube, clock: Clock, rounds: int = 6) -> Obj:
    body: Obj = {}
    for _ in range(rounds):
        got = await kube.get(path(names.KIND, NS, "demo"))
        assert got is not None
        body = got
        await r.reconcile(body, CAPS)
        clock.now += timedelta(seconds=1)
    got = await kube.get(path(names.KIND, NS, "demo"))
    assert got is not None
    return got


def replicas(kube: FakeKube, zone: str) -> int:
    return int(kube.objs[path("StatefulSet", NS, f"demo-user-{zone}")]["spec"]["replicas"])


def generation(kube: FakeKube) -> int:
    cm = kube.objs[path("ConfigMap", NS, "demo-membership")]
    return membership.loads(cm["data"][names.MEMBERSHIP_KEY]).generation


async def test_scale_down_waits_for_every_pod_to_load_the_smaller_membership() -> None:
    clock = Clock()
    kube = FakeKube(clock)
    gens = Generations()
    r = Reconciler(
        kube,  # type: ignore[arg-type]
        clock,
        OperatorConfig(membership_wait=60),
        gens,
    )
    kube.objs[path(names.KIND, NS, "demo")] = network(2)
    st = (await converge(r, kube, clock))["status"]
    assert (st["phase"], st["members"], replicas(kube, "a")) == ("Ready", 6, 2)
    g = generation(kube)

    # Scale to one per zone: the smaller membership goes out first, nobody leaves yet.
    kube.objs[path(names.KIND, NS, "demo")]["spec"]["userNodes"]["perZone"] = 1
    kube.objs[path(names.KIND, NS, "demo")]["metadata"]["generation"] = 2
    gens.value = {p: g for p in ("demo-user-a-0", "demo-user-b-0", "demo-user-c-0")}
    gens.value.update({"demo-validator-0": g, "demo-sst-0": g, "demo-rendezvous-x": g})
    st = (await converge(r, kube, clock, rounds=3))["status"]
    assert generation(kube) == g + 1
    assert [replicas(kube, z) for z in "abc"] == [2, 2, 2], "departing pods went too early"
    assert path("Pod", NS, "demo-user-a-1") in kube.objs
    assert path("Secret", NS, "demo-user-a-1-key") in kube.objs
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert ready["reason"] == "MembershipPropagating", ready
    assert "demo-user-a-0" in ready["message"]
    assert st["phase"] == "Progressing"

    # Every user node loaded it, but the validator has not: still waiting.
    gens.value.update({n: g + 1 for n in ("demo-user-a-0", "demo-user-b-0", "demo-user-c-0")})
    gens.value.update({"demo-sst-0": g + 1, "demo-rendezvous-x": g + 1})
    st = (await converge(r, kube, clock, rounds=2))["status"]
    assert [replicas(kube, z) for z in "abc"] == [2, 2, 2]
    assert "demo-validator-0" in {c["type"]: c for c in st["conditions"]}["Ready"]["message"]

    # Two of the user nodes loaded it: still waiting for the third.
    gens.value.update({"demo-validator-0": g + 1, "demo-user-c-0": g})
    await converge(r, kube, clock, rounds=2)
    assert [replicas(kube, z) for z in "abc"] == [2, 2, 2]

    # Everyone has it: the departing pods and then their keys go, and the network is Ready.
    gens.value["demo-user-c-0"] = g + 1
    st = (await converge(r, kube, clock, rounds=3))["status"]
    assert [replicas(kube, z) for z in "abc"] == [1, 1, 1]
    assert path("Pod", NS, "demo-user-a-1") not in kube.objs
    assert path("Secret", NS, "demo-user-a-1-key") not in kube.objs
    assert (st["phase"], st["members"], st["quorum"]) == ("Ready", 3, 2)


async def test_unreadable_pods_fall_back_to_the_bounded_wait() -> None:
    clock = Clock()
    kube = FakeKube(clock)
    r = Reconciler(kube, clock, OperatorConfig(membership_wait=10))  # type: ignore[arg-type]
    kube.objs[path(names.KIND, NS, "demo")] = network(2)
    await converge(r, kube, clock)
    kube.objs[path(names.KIND, NS, "demo")]["spec"]["userNodes"]["perZone"] = 1
    st = (await converge(r, kube, clock, rounds=4))["status"]
    assert [replicas(kube, z) for z in "abc"] == [2, 2, 2]
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert "cannot read" in ready["message"], ready
    st = (await converge(r, kube, clock, rounds=10))["status"]  # past the 10 s bound
    assert [replicas(kube, z) for z in "abc"] == [1, 1, 1]
    assert st["phase"] == "Ready"


async def test_a_removed_zone_leaves_only_once_the_membership_settled() -> None:
    clock = Clock()
    kube = FakeKube(clock)
    gens = Generations()
    r = Reconciler(kube, clock, OperatorConfig(membership_wait=60), gens)  # type: ignore[arg-type]
    kube.objs[path(names.KIND, NS, "demo")] = network(1)
    await converge(r, kube, clock)
    g = generation(kube)
    kube.objs[path(names.KIND, NS, "demo")]["spec"]["zones"] = ["a", "b"]
    await converge(r, kube, clock, rounds=3)
    assert generation(kube) == g + 1
    assert path("StatefulSet", NS, "demo-user-c") in kube.objs
    gens.value = {n: g + 1 for n in ("demo-user-a-0", "demo-user-b-0")}
    gens.value.update({"demo-validator-0": g + 1, "demo-sst-0": g + 1, "demo-rendezvous-x": g + 1})
    st = (await converge(r, kube, clock, rounds=3))["status"]
    assert path("StatefulSet", NS, "demo-user-c") not in kube.objs
    assert (st["members"], st["quorum"]) == (2, 2)


def _public_keys(kube: FakeKube) -> dict[str, bytes]:
    cm = kube.objs[path("ConfigMap", NS, "demo-membership")]
    return {
        m.name: m.public_key for m in membership.loads(cm["data"][names.MEMBERSHIP_KEY]).members
    }


async def test_key_rotation_keeps_the_sst_log_key_and_restarts_every_pod() -> None:
    """Rotating keys used to replace the SST's key too; the restarted SST then refused its own
    log ("the latest tree head is not signed by this SST's key"). Its key is the log's
    identity: it stays; its certificate and every other member's key change."""
    clock = Clock()
    kube = FakeKube(clock)
    r = Reconciler(kube, clock, OperatorConfig(membership_wait=2))  # type: ignore[arg-type]
    kube.objs[path(names.KIND, NS, "demo")] = network(1)
    st = (await converge(r, kube, clock))["status"]
    assert st["phase"] == "Ready"
    before = _public_keys(kube)
    sst_key = kube.objs[path("Secret", NS, "demo-sst-key")]
    sst_sts = kube.objs[path("StatefulSet", NS, "demo-sst")]
    sst_hash = sst_sts["spec"]["template"]["metadata"]["annotations"][names.KEY_HASH_ANNOTATION]
    users = {p: kube.objs[path("Pod", NS, p)]["metadata"]["uid"] for p in ("demo-user-a-0",)}

    net = kube.objs[path(names.KIND, NS, "demo")]
    net["metadata"]["annotations"] = {names.ROTATE_KEYS_ANNOTATION: "r1"}
    st = (await converge(r, kube, clock, rounds=300))["status"]  # rollout.SETTLE_SECONDS each
    secrets = [o for u, o in kube.objs.items() if u.startswith(path("Secret", NS)) and "-key" in u]
    assert {keyring.rotation_token(s) for s in secrets} == {"r1"}
    assert st["phase"] == "Ready", st
    after = _public_keys(kube)
    assert after["demo-sst"] == before["demo-sst"], "the rotation replaced the log's key"
    changed = {n for n in before if after[n] != before[n]}
    assert changed == set(before) - {"demo-sst"}
    new_sst = kube.objs[path("Secret", NS, "demo-sst-key")]
    assert new_sst["data"][names.TLS_CERT_KEY] != sst_key["data"][names.TLS_CERT_KEY]
    sst_sts = kube.objs[path("StatefulSet", NS, "demo-sst")]
    assert (
        sst_sts["spec"]["template"]["metadata"]["annotations"][names.KEY_HASH_ANNOTATION]
        != sst_hash
    ), "the SST's pod would keep its old certificate"
    assert kube.objs[path("Pod", NS, "demo-user-a-0")]["metadata"]["uid"] != users["demo-user-a-0"]
