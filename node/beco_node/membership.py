"""The membership file: who takes part in a network, and the quorum.

This is the contract between the operator (which writes it into a ConfigMap
under the key ``membership.json``) and the nodes (which read it from
``--membership`` and reload it when it changes). Pure data and parsing only.

Format (JSON)::

    {
      "network": "demo",            # the network's name
      "generation": 3,              # bumped by the writer on every change
      "quorum": 2,                  # valid user-node votes a commit needs
      "members": [
        {"name": "user-a-0", "role": "user", "zone": "a",
         "address": "user-a-0.beco-demo-user-a.ns.svc:9001",
         "public_key": "<base64 of the 32 raw Ed25519 bytes>",
         "peer_id": "<hex, see keys.peer_id>"}
      ]
    }

Roles: ``rendezvous``, ``validator``, ``sst`` (exactly one each) and ``user``
(one or more). ``peer_id`` must match the public key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from beco_node import keys
from beco_node.quorum import QuorumError, check_quorum

ROLES = ("rendezvous", "validator", "user", "sst")
SINGLETON_ROLES = ("rendezvous", "validator", "sst")


class MembershipError(ValueError):
    """A membership file that cannot be used, with the reason."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    role: str
    zone: str
    address: str
    public_key: bytes
    peer_id: str

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "role": self.role,
            "zone": self.zone,
            "address": self.address,
            "public_key": keys.public_key_to_b64(self.public_key),
            "peer_id": self.peer_id,
        }


@dataclass(frozen=True, slots=True)
class Membership:
    network: str
    generation: int
    quorum: int
    members: tuple[Member, ...]
    _by_peer: dict[str, Member] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_peer.update({m.peer_id: m for m in self.members})

    def by_peer_id(self, pid: str) -> Member | None:
        return self._by_peer.get(pid)

    def with_role(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def one(self, role: str) -> Member:
        found = self.with_role(role)
        if len(found) != 1:
            raise MembershipError(f"expected exactly one {role}, found {len(found)}")
        return found[0]

    @property
    def user_nodes(self) -> list[Member]:
        return self.with_role("user")

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "generation": self.generation,
            "quorum": self.quorum,
            "members": [m.to_json() for m in self.members],
        }

    def dumps(self) -> str:
        """Canonical text: stable key order, so equal memberships are equal bytes."""
        return json.dumps(self.to_json(), sort_keys=True, indent=2) + "\n"


def make_member(name: str, role: str, zone: str, address: str, public_key: bytes) -> Member:
    return Member(name, role, zone, address, public_key, keys.peer_id(public_key))


def build(network: str, generation: int, quorum: int, members: Iterable[Member]) -> Membership:
    """Build and validate a membership."""
    ms = Membership(network, generation, quorum, tuple(members))
    validate(ms)
    return ms


def validate(ms: Membership) -> None:
    if not ms.network:
        raise MembershipError("the network has no name")
    names: set[str] = set()
    peers: set[str] = set()
    for m in ms.members:
        if m.role not in ROLES:
            raise MembershipError(f"member {m.name!r} has unknown role {m.role!r}")
        if m.name in names:
            raise MembershipError(f"member name {m.name!r} appears twice")
        if m.peer_id in peers:
            raise MembershipError(f"peer {m.peer_id} ({m.name}) appears twice")
        if keys.peer_id(m.public_key) != m.peer_id:
            raise MembershipError(f"member {m.name!r}: peer_id does not match its public key")
        if not m.address:
            raise MembershipError(f"member {m.name!r} has no address")
        names.add(m.name)
        peers.add(m.peer_id)
    for role in SINGLETON_ROLES:
        count = len(ms.with_role(role))
        if count != 1:
            raise MembershipError(f"a network needs exactly one {role}, found {count}")
    try:
        check_quorum(len(ms.user_nodes), ms.quorum)
    except QuorumError as exc:
        raise MembershipError(str(exc)) from exc


def _member_from_json(obj: Mapping[str, Any]) -> Member:
    try:
        public_key = keys.public_key_from_b64(str(obj["public_key"]))
        member = Member(
            name=str(obj["name"]),
            role=str(obj["role"]),
            zone=str(obj.get("zone", "")),
            address=str(obj["address"]),
            public_key=public_key,
            peer_id=str(obj.get("peer_id") or keys.peer_id(public_key)),
        )
    except KeyError as exc:
        raise MembershipError(f"a member lacks the field {exc.args[0]!r}") from None
    except keys.KeyError_ as exc:
        raise MembershipError(f"member {obj.get('name')!r}: {exc}") from None
    return member


def loads(text: str | bytes) -> Membership:
    """Parse and validate a membership file's text."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MembershipError(f"membership is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MembershipError("membership must be a JSON object")
    try:
        members = [_member_from_json(m) for m in obj["members"]]
        ms = Membership(
            str(obj["network"]), int(obj.get("generation", 0)), int(obj["quorum"]), tuple(members)
        )
    except KeyError as exc:
        raise MembershipError(f"membership lacks the field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, MembershipError):
            raise
        raise MembershipError(f"membership has a malformed field: {exc}") from None
    validate(ms)
    return ms
