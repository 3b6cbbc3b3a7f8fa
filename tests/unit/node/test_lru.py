"""Every node cache is a BoundedLru: bounded by entries and by bytes, oldest use first out."""

from beco_node.lru import ENTRY_OVERHEAD, BoundedLru


def test_bounded_by_entries_least_recently_used_first() -> None:
    c: BoundedLru[str, int] = BoundedLru(max_entries=3, max_bytes=10**9)
    for k in "abc":
        c.put(k, 1)
    assert c.get("a") == 1  # a is now the most recent
    c.put("d", 1)
    assert "b" not in c and {"a", "c", "d"} == {k for k in "abcd" if k in c}
    assert len(c) == 3


def test_bounded_by_bytes() -> None:
    c: BoundedLru[str, bytes] = BoundedLru(max_entries=10**6, max_bytes=10_000, size=len)
    for i in range(1000):
        c.put(str(i), b"x" * 1000)
        assert c.bytes <= 10_000
    assert len(c) == 10_000 // (1000 + ENTRY_OVERHEAD)
    assert c.get("999") == b"x" * 1000 and c.get("0") is None


def test_replace_and_pop_keep_the_byte_count() -> None:
    c: BoundedLru[str, bytes] = BoundedLru(10, 10**6, size=len)
    c.put("a", b"xx")
    c.put("a", b"xxxx")
    assert c.bytes == 4 + ENTRY_OVERHEAD and len(c) == 1
    assert c.pop("a") == b"xxxx" and c.bytes == 0 and c.pop("a") is None
    # an entry larger than the whole budget is not kept
    c2: BoundedLru[str, bytes] = BoundedLru(10, 100, size=len)
    c2.put("big", b"x" * 1000)
    assert len(c2) == 0 and c2.bytes == 0
