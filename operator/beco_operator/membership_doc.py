"""The membership ConfigMap: members, their public keys and the quorum, as the nodes read it.

The text is :meth:`beco_node.membership.Membership.dumps` (canonical, so equal
memberships are equal bytes). The generation is bumped only when the content
other than the generation changes, so a reconcile that changes nothing writes
nothing. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from beco_node import membership

from beco_operator import names
from beco_operator.keyring import Slot
from beco_operator.names import Obj


def build_text(
    network: str,
    quorum: int,
    slots: Sequence[Slot],
    public_keys: Mapping[str, bytes],
    previous: str | None,
) -> tuple[str, int]:
    """The membership text and its generation, given the previous text (if any)."""
    members = [
        membership.make_member(s.name, s.role, s.zone, s.address, public_keys[s.name])
        for s in slots
    ]
    prev_gen = 0
    if previous:
        try:
            old = membership.loads(previous)
        except membership.MembershipError:
            old = None
        if old is not None:
            prev_gen = old.generation
            same = membership.build(network, old.generation, quorum, members)
            if same.dumps() == previous:
                return previous, old.generation
    ms = membership.build(network, prev_gen + 1, quorum, members)
    return ms.dumps(), ms.generation


def configmap(
    network: str,
    namespace: str,
    version: str,
    text: str,
    ca_cert: str = "",
    published_at: str = "",
) -> Obj:
    meta: Obj = {
        "name": names.membership_configmap(network),
        "namespace": namespace,
        "labels": names.labels(network, "membership", version),
    }
    if published_at:
        meta["annotations"] = {names.PUBLISHED_AT_ANNOTATION: published_at}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {names.MEMBERSHIP_KEY: text, **({names.CA_CERT_KEY: ca_cert} if ca_cert else {})},
    }
