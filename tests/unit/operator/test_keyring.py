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


def test_rotation_keeps_the_sst_key_and_renews_its_certificate() -> None:
    """The SST's key is its log's identity (RFC 9162): a rotation must not replace it, or the
    restarted SST refuses its own log; its TLS certificate is renewed like everyone's."""
    slots = keyring.desired_slots("demo", "ns", make_spec())
    by_name = {s.name: s for s in slots}
    assert [s.name for s in slots if keyring.follows_log(s)] == ["demo-sst"]
    for name, keeps in (("demo-sst", True), ("demo-validator", False), ("demo-user-a-0", False)):
        slot = by_name[name]
        old = keyring.key_secret("demo", "ns", slot, "v", "", NOW, tls_pair=(b"cert1", b"k1"))
        old["metadata"]["resourceVersion"] = "7"
        new = keyring.rotated_secret("demo", "ns", slot, old, "v", "r1", NOW, (b"cert2", b"k2"))
        assert (keyring.public_key(new) == keyring.public_key(old)) is keeps, name
        assert new["data"][names.TLS_CERT_KEY] != old["data"][names.TLS_CERT_KEY]
        assert keyring.key_hash(new) != keyring.key_hash(old), "the pod would not restart"
        assert keyring.rotation_token(new) == "r1" and keyring.rotated_at(new)
        assert new["metadata"]["resourceVersion"] == "7"  # the replace is guarded
        peer = new["metadata"]["annotations"][names.PEER_ID_ANNOTATION]
        assert peer == keys.peer_id(keyring.public_key(new))
        assert (new["kind"], new["apiVersion"]) == ("Secret", "v1")
