"""What the loopback tests of the multiplexed streams share (real grpc.aio on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

WAIT_S = 20  # generous: the machine is shared


async def until(done: Callable[[], bool]) -> None:
    for _ in range(int(WAIT_S / 0.02)):
        if done():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not within the wait")
