"""Input limits, checked before anything is proposed (and again by every voter and the SST).

Names follow PRECIS (RFC 8264) with the Nickname profile of RFC 8266, case preserved
(``precis-i18n``'s ``NicknameCasePreserved``): FreeformClass code points only (no
controls, default-ignorable code points such as U+200B or U+202E, line/paragraph
separators, noncharacters, private-use or unassigned code points), width-mapped,
non-ASCII spaces mapped to U+0020, runs of spaces collapsed, leading/trailing spaces
removed, NFKC. A name is accepted only in that canonical form (``canonical_name(v) ==
v``): the state then holds exactly the bytes the user signed, and two names that look
alike (NFD and NFC, fullwidth and ASCII, extra spaces) cannot both be stored.
Clients call :func:`canonical_name` before signing (``beco_node.client`` does).
Every node must run the same Python (its ``unicodedata`` version decides which code
points are assigned), or voters could disagree on a new character.

A name is at most 256 characters; a user has at most 16 middle names. Messages larger
than ``MAX_MESSAGE_BYTES`` are refused by gRPC itself with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from precis_i18n import get_profile

from beco_node.errors import InvalidArgument

MAX_NAME_CHARS = 256
MAX_MIDDLE_NAMES = 16
MAX_MESSAGE_BYTES = 64 * 1024
# Editors + viewers of one field. With the longest names (18 x 256 four-byte characters,
# about 18.5 KiB) a full state is about 25 KiB, so the largest peer message carrying one
# (a vote request: the previous commit's state and the longest request) stays near 45 KiB,
# well below MAX_MESSAGE_BYTES (tests/unit/node/test_sizes.py builds it). A revoke always
# shrinks a state, so an owner can always take access back.
MAX_GRANTEES_PER_FIELD = 64
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
USER_ID_RE = re.compile(r"^[0-9a-f]{32}$")
NAME_PROFILE = get_profile("NicknameCasePreserved")
# Distinct names (of at most MAX_NAME_CHARS) remembered in canonical form: a change's names
# are checked by its origin, its vote and the SST's apply, several times in one process;
# PRECIS enforcement (precis-i18n also looks a regex up per call) then runs once per name.
NAME_CACHE_ENTRIES = 4096
# precis-i18n's reason codes, said in words
_PRECIS_REASONS = {
    "DISALLOWED/controls": "a control character",
    "DISALLOWED/precis_ignorable_properties": (
        "a default-ignorable code point or noncharacter (zero-width, bidi override, ...)"
    ),
    "DISALLOWED/unassigned": "an unassigned code point",
    "DISALLOWED/other": (
        "a code point outside the PRECIS FreeformClass (line separator, private use, ...)"
    ),
    "DISALLOWED/has_compat": "a compatibility character",
}


def canonical_name(what: str, value: str) -> str:
    """The PRECIS Nickname form of ``value``; raises InvalidArgument with the reason."""
    try:
        out = _enforce(value) if len(value) <= MAX_NAME_CHARS else NAME_PROFILE.enforce(value)
    except UnicodeEncodeError as exc:
        if exc.reason == "empty":
            raise InvalidArgument(f"{what} is empty once spaces are removed") from None
        words = _PRECIS_REASONS.get(exc.reason, exc.reason)
        bad = value[exc.start : exc.end]
        cps = " ".join(f"U+{ord(c):04X}" for c in bad) or "?"
        raise InvalidArgument(
            f"{what} is refused by PRECIS (RFC 8266 nickname): {cps} at position "
            f"{exc.start} is {words} [{exc.reason}]"
        ) from None
    return out


@functools.lru_cache(maxsize=NAME_CACHE_ENTRIES)
def _enforce(value: str) -> str:
    """``NAME_PROFILE.enforce``, remembered (it is pure; refusals raise and are not kept)."""
    out: str = NAME_PROFILE.enforce(value)
    return out


def check_name(what: str, value: str, *, allow_empty: bool = False) -> None:
    if not value:
        if allow_empty:
            return
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidArgument(f"{what} has {len(value)} characters, at most {MAX_NAME_CHARS}")
    canonical = canonical_name(what, value)
    if canonical != value:
        raise InvalidArgument(
            f"{what} {value[:80]!r} is not in PRECIS canonical form (RFC 8266 nickname: NFKC, "
            f"single inner spaces, no leading/trailing space); send {canonical[:80]!r}"
        )


def check_middle_names(values: Sequence[str]) -> None:
    if len(values) > MAX_MIDDLE_NAMES:
        raise InvalidArgument(f"{len(values)} middle names, at most {MAX_MIDDLE_NAMES}")
    for i, v in enumerate(values):
        check_name(f"middle name {i + 1}", v)


def check_user_id(what: str, value: str) -> None:
    if not USER_ID_RE.match(value):
        raise InvalidArgument(f"{what} {value[:80]!r} is not a user id (32 lowercase hex digits)")


def page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size {requested} is above the limit {MAX_PAGE_SIZE}")
    return requested


def sequence_token(token: str) -> int:
    """The sequence a history page token names ("" = from the start)."""
    if not token:
        return 0
    if not token.isdigit() or len(token) > 20:
        raise InvalidArgument(f"page_token {token[:40]!r} is not a token this API returned")
    return int(token)
