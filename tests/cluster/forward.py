"""TCP forwarder: listen on a host address, connect inside a network namespace.

``python forward.py LISTEN_HOST:PORT NETNS_PATH TARGET_HOST:PORT`` binds the listening socket in
the host's namespace, then moves the (single-threaded) process into NETNS_PATH, so every
outgoing connection is made from inside it. This is how clients on the host (kubectl, helm,
tests) reach an API server that listens only inside the cluster's namespace. Stdlib only: it
runs as its own process under the harness's supervision.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve(sock: socket.socket, host: str, port: int) -> None:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(host, port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(_pipe(cr, uw), _pipe(ur, cw))

    server = await asyncio.start_server(handle, sock=sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    listen, netns, target = sys.argv[1:4]
    lhost, lport = listen.rsplit(":", 1)
    thost, tport = target.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((lhost, int(lport)))
    sock.listen(128)
    fd = os.open(netns, os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
        sys.exit(f"setns {netns}: {os.strerror(ctypes.get_errno())}")
    os.close(fd)
    asyncio.run(_serve(sock, thost, int(tport)))


if __name__ == "__main__":
    main()
