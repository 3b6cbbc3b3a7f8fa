"""Compare before writing: a child is applied only when it differs from what is wanted.

Server-side apply of an unchanged object is a no-op for the object but still a
write request; an idle operator must make none. A child needs applying when it
is missing, when its ``applied-hash`` annotation differs from the hash of the
desired manifest (the operator changed its mind, including removed fields), or
when some desired field differs from the live object (somebody edited it).
Fields the server adds (defaults, status) are ignored. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from beco_operator import names
from beco_operator.names import Obj
from beco_operator.render import digest


def is_subset(want: Any, have: Any) -> bool:
    """Whether every field of ``want`` is present and equal in ``have``."""
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return False
        return all(k in have and is_subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return False
        return all(is_subset(w, h) for w, h in zip(want, have, strict=True))
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have
    if isinstance(want, int | float) and isinstance(have, int | float):
        return want == have
    return bool(want == have)


def with_hash(obj: Obj) -> Obj:
    """``obj`` with its own hash recorded in an annotation."""
    h = digest(obj)
    meta = dict(obj["metadata"])
    ann = dict(meta.get("annotations") or {})
    ann[names.APPLIED_HASH_ANNOTATION] = h
    meta["annotations"] = ann
    return {**obj, "metadata": meta}


def needs_apply(want: Obj, have: Obj | None) -> bool:
    """``want`` must carry its hash (see :func:`with_hash`)."""
    if have is None:
        return True
    ann = (have.get("metadata") or {}).get("annotations") or {}
    want_hash = want["metadata"]["annotations"][names.APPLIED_HASH_ANNOTATION]
    if ann.get(names.APPLIED_HASH_ANNOTATION) != want_hash:
        return True
    return not is_subset(want, have)


def must_recreate(want: Obj, have: Obj | None) -> bool:
    """Whether ``have`` differs from ``want`` in a field the API server will not change in place.

    A Service cannot switch between headless and a cluster IP (the validator's and the SST's
    Services became headless when their StatefulSets' ``serviceName`` had to name one).
    """
    if have is None or want["kind"] != "Service":
        return False
    want_headless = bool(want["spec"].get("clusterIP") == "None")
    have_headless = (have.get("spec") or {}).get("clusterIP") == "None"
    return want_headless != have_headless
