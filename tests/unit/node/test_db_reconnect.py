"""The SST's reconnection to PostgreSQL, without a database: the bounded, jittered backoff
(pure), the health it reports from each check (pure), and ``watch_database`` driven by a
manual clock against a store whose database comes and goes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from beco_node import keys, membership, settings
from beco_node.backoff import Backoff, DatabaseHealth
from beco_node.clock import ManualClock
from beco_node.services.runtime import Runtime
from beco_node.services.startup import (
    FIRST_BACKOFF_S,
    MAX_BACKOFF_S,
    database_backoff,
    watch_database,
)
from beco_node.sst.records import StoreUnavailableError


def test_backoff_doubles_to_its_cap_and_restarts_after_a_reset() -> None:
    b = Backoff(first_s=0.1, cap_s=2.0, rand=lambda: 0.0)  # no jitter drawn
    assert [round(b.next_delay(), 6) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    b.reset()
    assert b.next_delay() == 0.1


def test_backoff_jitter_only_shortens_a_delay() -> None:
    b = Backoff(first_s=1.0, cap_s=2.0, jitter=0.5, rand=lambda: 0.999)
    assert 0.5 <= b.next_delay() < 0.51
    seq = iter([0.0, 0.5, 0.25])
    b = Backoff(first_s=2.0, cap_s=2.0, jitter=0.5, rand=lambda: next(seq))
    assert [b.next_delay() for _ in range(3)] == [2.0, 1.5, 1.75]


def test_the_sst_backoff_is_a_few_seconds_at_most() -> None:
    b = database_backoff()
    delays = [b.next_delay() for _ in range(100)]
    assert max(delays) <= MAX_BACKOFF_S <= 5.0
    assert delays[0] <= FIRST_BACKOFF_S
    assert len({round(d, 9) for d in delays[10:]}) > 1, "no jitter"


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"first_s": 0.0, "cap_s": 2.0}, "first_s"),
        ({"first_s": 3.0, "cap_s": 2.0}, "cap_s"),
        ({"first_s": 0.1, "cap_s": 2.0, "factor": 0.5}, "factor"),
        ({"first_s": 0.1, "cap_s": 2.0, "jitter": 1.0}, "jitter"),
    ],
)
def test_backoff_refuses_bad_bounds(kwargs: dict[str, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Backoff(**kwargs)


def test_health_a_refused_connection_counts_at_once_a_timeout_once_forgiven() -> None:
    h = DatabaseHealth(poll_s=1.0, backoff=Backoff(first_s=0.1, cap_s=2.0, rand=lambda: 0.0))
    assert h.reason is None
    assert h.failed("slow", timed_out=True) == 0.1
    assert h.reason is None  # one slow answer under load: still serving
    assert h.failed("slow again", timed_out=True) == 0.2
    assert h.reason == "the SST lost PostgreSQL (slow again)"
    assert h.succeeded() == 1.0
    assert h.reason is None
    h.failed("connection refused")
    assert h.reason == "the SST lost PostgreSQL (connection refused)"
    assert h.succeeded() == 1.0 and h.failed("x") == 0.1  # the backoff starts over


class FakeStore:
    """``ping`` answers while ``up``; otherwise it fails as a refused connection does."""

    def __init__(self) -> None:
        self.up = True
        self.pings = 0
        self.connection_lost = asyncio.Event()

    async def ping(self) -> None:
        self.pings += 1
        if not self.up:
            raise StoreUnavailableError("PostgreSQL does not answer: connection refused")


@pytest.fixture
async def sst_runtime(tmp_path: Path) -> AsyncIterator[tuple[Runtime, ManualClock]]:
    key = keys.generate_private_key()
    members = [
        membership.make_member(
            role,
            role,
            "a",
            f"127.0.0.1:{port}",
            keys.public_key_bytes(key if role == "sst" else keys.generate_private_key()),
        )
        for port, role in enumerate(("rendezvous", "validator", "sst", "user"), 1)
    ]
    ms = membership.build("test", 1, 1, members)
    (tmp_path / "membership.json").write_text(ms.dumps())
    (tmp_path / "sst.key").write_bytes(keys.private_key_to_pem(key))
    s = settings.parse(
        ["--role", "sst", "--membership", str(tmp_path / "membership.json"),
         "--key-file", str(tmp_path / "sst.key"), "--insecure", "--membership-poll-ms", "1000",
         "--database-url", "postgresql://beco@127.0.0.1:1/beco"]
    )  # fmt: skip
    clock = ManualClock()
    rt = Runtime(s, clock)
    rt.set_ready("started", None)
    yield rt, clock
    await rt.close()


async def settle() -> None:
    """Let every task that can run do so (no real time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_watch_database_not_serving_at_once_bounded_retries_serving_at_first_success(
    sst_runtime: tuple[Runtime, ManualClock],
) -> None:
    rt, clock = sst_runtime
    store = FakeStore()
    async with asyncio.TaskGroup() as tg:  # as in the node: the watch runs in its TaskGroup
        watch = tg.create_task(watch_database(rt, store))
        await settle()
        assert clock.sleeping == [1.0]  # healthy: one check per poll interval
        clock.advance(1.0)
        await settle()
        assert store.pings == 1 and rt.not_ready_reason() is None

        # PostgreSQL goes away and a commit meets the broken connection: the watch checks
        # at once, without waiting for its poll, and the SST stops serving, naming the cause.
        store.up = False
        store.connection_lost.set()
        await settle()
        assert store.pings == 2
        reason = rt.not_ready_reason()
        assert reason is not None and "PostgreSQL" in reason and "refused" in reason, reason

        # While it is down: retries on the clock, never more than the cap apart, jittered.
        waits: list[float] = []
        for _ in range(12):
            (left,) = clock.sleeping
            assert 0 < left <= MAX_BACKOFF_S
            waits.append(left)
            clock.advance(left)
            await settle()
        assert store.pings == 14
        assert waits[0] <= FIRST_BACKOFF_S and max(waits) <= MAX_BACKOFF_S
        assert rt.not_ready_reason() == reason  # a failed check changes nothing

        # Back: SERVING at the first check that succeeds, then back to the poll interval.
        store.up = True
        (left,) = clock.sleeping
        clock.advance(left)
        await settle()
        assert rt.not_ready_reason() is None
        assert clock.sleeping == [1.0]
        watch.cancel()
    assert watch.cancelled()


async def test_watch_database_forgives_one_slow_answer(
    sst_runtime: tuple[Runtime, ManualClock],
) -> None:
    rt, clock = sst_runtime
    slow = [True, False]

    class Slow(FakeStore):
        async def ping(self) -> None:
            self.pings += 1
            if slow.pop(0):
                raise StoreUnavailableError(
                    "PostgreSQL does not answer: TimeoutError", timed_out=True
                )

    store = Slow()
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(watch_database(rt, store))
        await settle()
        clock.advance(1.0)
        await settle()
        assert store.pings == 1 and rt.not_ready_reason() is None  # one timeout: still serving
        (left,) = clock.sleeping
        assert left <= FIRST_BACKOFF_S  # but checked again soon
        clock.advance(left)
        await settle()
        assert store.pings == 2 and rt.not_ready_reason() is None
        assert clock.sleeping == [1.0]
        watch.cancel()
    assert rt.not_ready_reason() is None
