from __future__ import annotations

from beco_node import keys
from beco_operator import keyring, names

from .conftest import NOW, make_spec


def test_slots_one_per_member_with_dns_addresses() -> None:
    slots = keyring.desired_slots("demo", "ns1", make_spec(userNodes={"perZone": 2}))
    assert [s.name for s in slots] == [
        "demo-rendezvous",
        "demo-validator",
        "demo-sst",
        "demo-user-a-0",
        "demo-user-a-1",
        "demo-user-b-0",
        "demo-user-b-1",
        "demo-user-c-0",
        "demo-user-c-1",
    ]
    user = slots[4]
    assert (user.role, user.zone) == ("user", "a")
    assert user.address == "demo-user-a-1.demo-user-a.ns1.svc:9001"
    assert slots[1].address == "demo-validator.ns1.svc:9001"


def test_key_secret_holds_a_pem_key_and_its_peer_id() -> None:
    slot = keyring.desired_slots("demo", "ns", make_spec())[3]
    sec = keyring.key_secret("demo", "ns", slot, "0.1.0", "", NOW)
    pub = keyring.public_key(sec)
    assert sec["metadata"]["name"] == "demo-user-a-0-key"
    assert sec["metadata"]["annotations"][names.PEER_ID_ANNOTATION] == keys.peer_id(pub)
    assert names.ROTATED_AT_ANNOTATION not in sec["metadata"]["annotations"]
    assert sec["metadata"]["labels"][names.MEMBER_LABEL] == "demo-user-a-0"
    # Two calls make two different keys: a key is generated once and then only read.
    assert keyring.public_key(keyring.key_secret("demo", "ns", slot, "0.1.0", "", NOW)) != pub


def test_plan_keeps_existing_keys_and_drops_departed_members() -> None:
    spec2 = make_spec(userNodes={"perZone": 2})
    slots1 = keyring.desired_slots("demo", "ns", make_spec())
    existing = [keyring.key_secret("demo", "ns", s, "v", "", NOW) for s in slots1]
    plan = keyring.plan(keyring.desired_slots("demo", "ns", spec2), existing)
    assert [s.name for s in plan.create] == ["demo-user-a-1", "demo-user-b-1", "demo-user-c-1"]
    assert plan.delete == []
    shrink = keyring.plan(
        slots1,
        [
            keyring.key_secret("demo", "ns", s, "v", "", NOW)
            for s in keyring.desired_slots("demo", "ns", spec2)
        ],
    )
    assert shrink.create == []
    assert shrink.delete == ["demo-user-a-1-key", "demo-user-b-1-key", "demo-user-c-1-key"]


def test_rotation_candidates_are_those_not_yet_rotated_for_the_token() -> None:
    slots = keyring.desired_slots("demo", "ns", make_spec())
    secrets = {
        names.key_secret(s.name): keyring.key_secret("demo", "ns", s, "v", "", NOW) for s in slots
    }
    assert keyring.rotation_candidates(slots, secrets, "") == []
    assert len(keyring.rotation_candidates(slots, secrets, "r1")) == 6
    secrets["demo-rendezvous-key"] = keyring.key_secret(
        "demo", "ns", slots[0], "v", "r1", NOW, rotated=True
    )
    todo = keyring.rotation_candidates(slots, secrets, "r1")
    assert [s.name for s in todo][:1] == ["demo-validator"]
