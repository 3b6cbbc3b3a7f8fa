from __future__ import annotations

from beco_node import keys, membership
from beco_operator import keyring, membership_doc, names

from .conftest import NOW, make_spec


def _keys(slots: list[keyring.Slot]) -> dict[str, bytes]:
    return {
        s.name: keyring.public_key(keyring.key_secret("demo", "ns", s, "v", "", NOW)) for s in slots
    }


def test_membership_is_what_the_nodes_read() -> None:
    spec = make_spec()
    slots = keyring.desired_slots("demo", "ns", spec)
    pubs = _keys(slots)
    text, gen = membership_doc.build_text("demo", spec.quorum, slots, pubs, None)
    ms = membership.loads(text)
    assert gen == 1 and ms.generation == 1
    assert ms.quorum == 2
    assert len(ms.user_nodes) == 3
    m = ms.one("validator")
    assert m.peer_id == keys.peer_id(pubs["demo-validator"])
    assert {u.zone for u in ms.user_nodes} == {"a", "b", "c"}
    cm = membership_doc.configmap("demo", "ns", "v", text)
    assert cm["data"][names.MEMBERSHIP_KEY] == text


def test_generation_moves_only_when_content_changes() -> None:
    spec = make_spec()
    slots = keyring.desired_slots("demo", "ns", spec)
    pubs = _keys(slots)
    text, gen = membership_doc.build_text("demo", spec.quorum, slots, pubs, None)
    again, gen2 = membership_doc.build_text("demo", spec.quorum, slots, pubs, text)
    assert (again, gen2) == (text, gen)
    spec6 = make_spec(userNodes={"perZone": 2})
    slots6 = keyring.desired_slots("demo", "ns", spec6)
    pubs6 = {**_keys(slots6), **pubs}
    text6, gen6 = membership_doc.build_text("demo", spec6.quorum, slots6, pubs6, text)
    ms = membership.loads(text6)
    assert gen6 == 2 and ms.quorum == 4 and len(ms.user_nodes) == 6
    old = membership.loads(text)
    for m in old.members:  # old members keep their keys
        assert ms.by_peer_id(m.peer_id) is not None
