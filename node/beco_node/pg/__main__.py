"""``python -m beco_node.pg DATA_DIR [--port N]``: run an EmbeddedPostgres until Ctrl-C.

Prints the DSN, then waits for SIGINT or SIGTERM and stops the server cleanly.
Handy to point ``beco-node --role sst --database-url`` at a database by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from beco_node.pg.binaries import PostgresError
from beco_node.pg.embedded import EmbeddedPostgres


async def _run(data_dir: Path, port: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EmbeddedPostgres(data_dir, port=port) as pg:
        print(pg.dsn, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beco_node.pg", description=__doc__)
    parser.add_argument("data_dir", type=Path, help="state directory (created if missing)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: free)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args.data_dir, args.port))
    except PostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
