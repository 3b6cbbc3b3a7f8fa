"""Input limits, checked before anything is proposed (and again by every voter).

A name is 1..256 characters of valid UTF-8 without control characters; a user
has at most 16 middle names. Protobuf ``string`` fields are already valid UTF-8
on the wire (the runtime rejects anything else), so here we check lengths and
character classes. Messages larger than ``MAX_MESSAGE_BYTES`` are refused by
gRPC itself with RESOURCE_EXHAUSTED before they reach a handler.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from beco_node.errors import InvalidArgument

MAX_NAME_CHARS = 256
MAX_MIDDLE_NAMES = 16
MAX_MESSAGE_BYTES = 64 * 1024
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
USER_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def check_name(what: str, value: str, *, allow_empty: bool = False) -> None:
    if not value:
        if allow_empty:
            return
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidArgument(f"{what} has {len(value)} characters, at most {MAX_NAME_CHARS}")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise InvalidArgument(f"{what} contains the control character U+{ord(ch):04X}")
    if value != value.strip():
        raise InvalidArgument(f"{what} has leading or trailing whitespace")


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
