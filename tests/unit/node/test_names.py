"""Names go through PRECIS (RFC 8266 nickname, case preserved): one rule, every path."""

import random
import unicodedata

import pytest
from beco.v1 import identity_pb2 as pb
from beco_node import keys, limits, model
from beco_node.errors import InvalidArgument

NOW = 1_700_000_000_000
KEY = keys.generate_private_key()
ME = keys.peer_id(keys.public_key_bytes(KEY))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("\u200b", "U+200B"),  # only a zero-width space
        ("Ali\u202ece", "U+202E"),  # right-to-left override
        ("Al\u2028ice", "U+2028"),  # line separator
        ("Al\ufdd0ice", "U+FDD0"),  # noncharacter
        ("Al\U0010fffeice", "U+10FFFE"),  # noncharacter (plane 16)
        ("Al\ue000ice", "U+E000"),  # private use
        ("Al\U000f0000ice", "U+F0000"),  # supplementary private use
        ("Al\x00ice", "U+0000"),  # control
        ("Al\x7fice", "U+007F"),
    ],
)
def test_refused_with_the_code_point_and_reason(name: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        limits.check_name("first_name", name)
    assert reason in err.value.message
    assert "PRECIS" in err.value.message


@pytest.mark.parametrize(
    "name", ["Alice", "Mária", "Мария", "محمد", "李小龍", "O'Brien", "Jean-Luc", "Anne Marie"]
)
def test_ordinary_names_pass_unchanged(name: str) -> None:
    limits.check_name("first_name", name)
    assert limits.canonical_name("first_name", name) == name


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (unicodedata.normalize("NFD", "Mária"), "Mária"),  # NFD -> NFC
        ("\uff21lice", "Alice"),  # fullwidth A
        ("  Anne   Marie ", "Anne Marie"),  # spaces trimmed and collapsed
        ("\u00a0Bob", "Bob"),  # no-break space
    ],
)
def test_lookalikes_have_one_form_and_only_it_is_accepted(raw: str, canonical: str) -> None:
    assert limits.canonical_name("n", raw) == canonical
    limits.check_name("n", canonical)
    with pytest.raises(InvalidArgument) as err:
        limits.check_name("n", raw)
    assert "canonical" in err.value.message and repr(canonical) in err.value.message


def test_spaces_only_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        limits.check_name("last_name", "   ")


def test_every_mutation_path_uses_the_rule() -> None:
    bad = "Ali\u202ece"
    uid = "0" * 32
    requests = [
        (model.CREATE_USER, pb.CreateUserRequest(first_name=bad)),
        (model.CREATE_USER, pb.CreateUserRequest(last_name=bad)),
        (model.CREATE_USER, pb.CreateUserRequest(middle_names=["Ok", bad])),
        (model.UPDATE_FIRST, pb.UpdateFirstNameRequest(user_id=uid, first_name=bad)),
        (model.UPDATE_LAST, pb.UpdateLastNameRequest(user_id=uid, last_name=bad)),
        (model.UPDATE_MIDDLE, pb.UpdateMiddleNamesRequest(user_id=uid, middle_names=[bad])),
    ]
    for method, req in requests:
        with pytest.raises(InvalidArgument, match="U\\+202E"):
            model.check_limits(method, req)


def test_clients_canonicalise_before_signing() -> None:
    nfd = unicodedata.normalize("NFD", "Mária")
    req = pb.CreateUserRequest(first_name=nfd, middle_names=[" Anne "], last_name="\uff33mith")
    model.canonicalise_names(req)
    assert (req.first_name, list(req.middle_names), req.last_name) == ("Mária", ["Anne"], "Smith")
    model.check_limits(model.CREATE_USER, req)
    # A name with no canonical form is left for the node to refuse with its reason.
    bad = pb.UpdateFirstNameRequest(user_id=ME, first_name="\u200b")
    model.canonicalise_names(bad)
    assert bad.first_name == "\u200b"


def test_the_canonical_form_is_stable() -> None:
    # Accepting only canonical names relies on canonical(canonical(x)) == canonical(x).
    rng = random.Random(8266)
    pool = [chr(c) for c in [*range(0x20, 0x250), *range(0x300, 0x370), *range(0x2000, 0x2070)]]
    pool += ["\uff21", "\u2126", "\u212b", "\ufb01", "\u0345", "\u1e9b", "\u0387", "\U0001d538"]
    checked = 0
    for _ in range(5000):
        raw = "".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))
        try:
            canonical = limits.canonical_name("n", raw)
        except InvalidArgument:
            continue
        assert limits.canonical_name("n", canonical) == canonical, repr(raw)
        checked += 1
    assert checked > 1000


def test_a_name_is_enforced_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Origin, vote and apply check the same names in one process: PRECIS runs once each,
    refusals are never remembered, and names longer than the limit are not kept."""
    calls: list[str] = []
    real = limits.NAME_PROFILE.enforce

    def counting(value: str) -> str:
        calls.append(value)
        out: str = real(value)
        return out

    monkeypatch.setattr(limits.NAME_PROFILE, "enforce", counting)
    limits._enforce.cache_clear()
    for _ in range(3):
        limits.check_name("first_name", "Zoë Quinn")
    assert calls == ["Zoë Quinn"]
    for _ in range(2):
        with pytest.raises(InvalidArgument, match=r"U\+200B"):
            limits.check_name("first_name", "Zo\u200be")
    assert calls.count("Zo\u200be") == 2
    long = "x" * (limits.MAX_NAME_CHARS + 1)
    limits.canonical_name("n", long)
    limits.canonical_name("n", long)
    assert calls.count(long) == 2
    limits._enforce.cache_clear()
