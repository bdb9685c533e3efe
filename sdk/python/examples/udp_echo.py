#!/usr/bin/env python3
"""udp_echo: a UDP echo server whose socket moves with handoff.

Each datagram is answered with ``<pid> <datagram>``, so a client sees which
process answered. A new process started with ``--standby`` takes the socket
over in a migration; datagrams sent meanwhile wait in the socket's queue.

    udp_echo.py --addr 127.0.0.1:9001 [--standby] [--socket PATH]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import handoff  # noqa: E402


def main() -> int:
    """Join, take or open the socket, echo until it moved away."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default="127.0.0.1:9001")
    ap.add_argument("--socket", default=None)
    ap.add_argument("--name", default="udp-echo")
    ap.add_argument("--standby", action="store_true")
    a = ap.parse_args()
    p = handoff.join(socket_path=a.socket, name=a.name, standby=a.standby)
    pc = p.listen_packet("udp", a.addr)
    p.ready()
    host, port = pc.getsockname()[:2]
    print(f"udp_echo: serving on {host}:{port} (inherited={str(p.inherited).lower()})", flush=True)
    prefix = b"%d " % os.getpid()
    while True:
        try:
            data, peer = pc.recvfrom(65536)
            pc.sendto(prefix + data, peer)
        except handoff.Moved:
            break
    print("udp_echo: moved away", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
