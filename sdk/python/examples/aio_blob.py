#!/usr/bin/env python3
"""aio_blob: an asyncio server whose connections carry large state across a
handoff (the memfd path of docs/protocol.md, section 9).

A client sends ``SIZE\\n``; the server makes a blob of SIZE bytes for that
connection (byte i is ``i % 251``) and answers ``HELD <pid>\\n``. Each
later ``?\\n`` is answered ``OK <size> <sha256 of the blob> <pid>\\n``. The
blob is the connection's state record, so after a migration the new
process answers with the same digest and its own pid.

    aio_blob.py --addr 127.0.0.1:9000 [--standby] [--socket PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import sys
from typing import Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import handoff  # noqa: E402
import handoff.aio as hio  # noqa: E402

MAX_SIZE = 64 << 20


def blob(size: int) -> bytes:
    """The blob of a connection: byte i is i % 251."""
    unit = bytes(range(251))
    return (unit * (size // 251 + 1))[:size]


async def handle(stream: hio.Stream, state: Optional[bytes]) -> None:
    """Serve one connection, from its start or from a handed-over state."""
    data: bytes = state or b""
    stream.state = lambda: data
    try:
        while True:
            line = await stream.readline()
            if not line:
                break
            cmd = line.strip()
            if not data and cmd.isdigit() and 0 < int(cmd) <= MAX_SIZE:
                data = blob(int(cmd))
                stream.write(b"HELD %d\n" % os.getpid())
            elif data and cmd == b"?":
                stream.write(b"OK %d %s %d\n" % (len(data), hashlib.sha256(data).hexdigest().encode(), os.getpid()))
            else:
                stream.write(b"ERR\n")
            await stream.drain()
    except handoff.Moved:
        return
    except OSError:
        pass
    stream.close()


async def main() -> int:
    """Join, take or open the listener, serve until the sockets moved away or SIGTERM."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default="127.0.0.1:9000")
    ap.add_argument("--socket", default=None)
    ap.add_argument("--name", default="aio-blob")
    ap.add_argument("--standby", action="store_true")
    a = ap.parse_args()
    p = await hio.join(socket_path=a.socket, name=a.name, standby=a.standby)
    ln = p.listen("tcp", a.addr)
    imported = await hio.ready(p)
    for ic in imported:
        hio.adopt(p, ic, handle)
    server = hio.serve(p, ln, handle)
    host, port = ln.getsockname()[:2]
    print(f"aio_blob: serving on {host}:{port} (inherited={str(p.inherited).lower()}, imported {len(imported)} connections)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    done = asyncio.ensure_future(hio.wait_done(p))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
    server.close()
    done.cancel()
    stopped.cancel()
    if p.done.is_set():
        print("aio_blob: moved away", flush=True)
        return 0
    p.close()
    print("aio_blob: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
