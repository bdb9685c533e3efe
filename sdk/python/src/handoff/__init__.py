"""handoff: hand a server's listening sockets and established connections to
a new process of itself, on the same host, without a client noticing more
than a pause.

The Python side of https://github.com/handoff-dev/handoff, speaking the
protocol of ``docs/protocol.md`` (versions 1 and 2) with the Go node agent.
The concepts and names are the Go SDK's::

    p = handoff.join()                         # never fails for lack of an agent
    ln = p.listen("tcp", "127.0.0.1:8080")     # inherited if the old process handed one over
    for ic in p.ready():                       # target: once the old process let go
        serve_from(ic.conn, ic.state)
    while not p.done.is_set():
        conn, _ = ln.accept()
        p.track(conn, freeze=..., resume=..., moved=...)

See :mod:`handoff.aio` for asyncio servers. Only the standard library is used.
"""

from ._process import (
    DEFAULT_ACCEPT_GRACE,
    DEFAULT_SOCKET,
    DEFAULT_STANDBY_TIMEOUT,
    Imported,
    Listener,
    PacketSocket,
    Process,
    Tracked,
    join,
)
from .errors import Aborted, HandoffError, Moved, NotSupported, Skip, StandbyTimeout

__all__ = [
    "DEFAULT_ACCEPT_GRACE",
    "DEFAULT_SOCKET",
    "DEFAULT_STANDBY_TIMEOUT",
    "Aborted",
    "HandoffError",
    "Imported",
    "Listener",
    "Moved",
    "NotSupported",
    "PacketSocket",
    "Process",
    "Skip",
    "StandbyTimeout",
    "Tracked",
    "join",
]

__version__ = "0.1.0"
