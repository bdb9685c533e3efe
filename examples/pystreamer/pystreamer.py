#!/usr/bin/env python3
"""pystreamer: the example streaming workload of handoff, in Python.

It serves exactly what examples/streamer serves (docs/streamer.md): the
same URL (``GET /streams/NAME``), the same bytes (block k of stream NAME is
``sha256("NAME:k")``), the same error replies and the same per-connection
state record, so that a Go streamer and this one hand connections to each
other and a verifying client (cmd/handoff-load) proves nothing was lost::

    pystreamer.py --addr 127.0.0.1:8080 --rate 16384 --tick 0.1
    curl -sN http://127.0.0.1:8080/streams/demo | head -c 64 | xxd

It is one thread running a ``selectors`` loop. The handoff SDK calls the
freeze, resume and moved hooks from its own thread; they take the loop's
lock, which the loop holds except while it waits in ``select``, so a hook
always finds the connection at rest between two events: a safe point.

It runs until SIGINT or SIGTERM, or until its sockets were handed to a new
process (then it exits 0).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import os
import resource
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "sdk", "python", "src"))

import handoff  # noqa: E402

OK_HEADER = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
STREAM_PREFIX = b"/streams/"
BLOCK = 32
MAX_REQUEST = 8 << 10
MAX_NAME = 128
MAX_UNSENT = 64 << 20
STATE_VERSION = 2
PHASE_REQUEST, PHASE_STREAM, PHASE_CLOSING = 1, 2, 3


def _error_response(status: str, body: str, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n{body}").encode()


RESP_BAD_REQUEST = _error_response("400 Bad Request", "malformed request\n")
RESP_NOT_FOUND = _error_response("404 Not Found", "not found: use GET /streams/NAME\n")
RESP_BAD_METHOD = _error_response("405 Method Not Allowed", "only GET is supported\n", "Allow: GET\r\n")

_NAME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._~-")


def valid_name(n: bytes) -> bool:
    """1 to 128 characters from [A-Za-z0-9._~-]."""
    return 0 < len(n) <= MAX_NAME and all(c in _NAME_CHARS for c in n)


def fill(name: str, off: int, n: int) -> bytes:
    """n bytes of stream name from offset off."""
    out = []
    k, r = divmod(off, BLOCK)
    pre = name.encode() + b":"
    got = 0
    while got < n:
        b = hashlib.sha256(pre + str(k).encode()).digest()[r:]
        out.append(b)
        got += len(b)
        k, r = k + 1, 0
    return b"".join(out)[:n]


def parse_request(h: bytes) -> tuple[Optional[str], Optional[bytes]]:
    """Parse a complete request header; returns (name, None) or (None, error response)."""
    while h.startswith(b"\r\n"):
        h = h[2:]
    eol = h.find(b"\r\n")
    if eol <= 0:
        return None, RESP_BAD_REQUEST
    line = h[:eol]
    parts = line.split(b" ", 1)
    if len(parts) != 2:
        return None, RESP_BAD_REQUEST
    method, rest = parts
    parts = rest.split(b" ", 1)
    if len(parts) != 2:
        return None, RESP_BAD_REQUEST
    target, version = parts
    if not method or not target or version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None, RESP_BAD_REQUEST
    if any(c < 0x20 or c == 0x7F for c in line):
        return None, RESP_BAD_REQUEST
    fields = h[eol + 2: len(h) - 2]
    while fields:
        e = fields.find(b"\r\n")
        if e < 0:
            return None, RESP_BAD_REQUEST
        if fields.find(b":", 0, e) <= 0:
            return None, RESP_BAD_REQUEST
        fields = fields[e + 2:]
    if method != b"GET":
        return None, RESP_BAD_METHOD
    if not target.startswith(STREAM_PREFIX) or not valid_name(target[len(STREAM_PREFIX):]):
        return None, RESP_NOT_FOUND
    return target[len(STREAM_PREFIX):].decode(), None


# The state record: examples/streamer/server/state.go.

def _uvarint(v: int) -> bytes:
    if v < 0x80:
        return _SMALL[v]
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


class BadState(ValueError):
    """A state record that does not decode."""


class _Dec:
    def __init__(self, b: bytes) -> None:
        self.b, self.i = b, 0

    def uvarint(self, what: str) -> int:
        """The next unsigned varint, which must be minimally encoded."""
        v = shift = 0
        start = self.i
        while True:
            if self.i >= len(self.b) or self.i - start >= 10:
                raise BadState(f"truncated, overlong or non-minimal {what}")
            c = self.b[self.i]
            self.i += 1
            v |= (c & 0x7F) << shift
            shift += 7
            if c < 0x80:
                break
        n = self.i - start
        if n > 1 and self.b[self.i - 1] == 0 or v >= 1 << 64:
            raise BadState(f"truncated, overlong or non-minimal {what}")
        return v

    def bytes_(self, what: str, limit: int) -> bytes:
        """The next length-prefixed field, at most limit bytes."""
        n = self.uvarint(what + " length")
        if n > limit:
            raise BadState(f"{what} length {n} exceeds {limit}")
        if n > len(self.b) - self.i:
            raise BadState(f"{what} truncated: {len(self.b) - self.i} of {n} bytes")
        v = self.b[self.i:self.i + n]
        self.i += n
        return v


def encode_state(phase: int, request: bytes = b"", name: str = "", nxt: int = 0, unsent: bytes = b"", due: int = 0) -> bytes:
    """The state record (version 2) of a connection."""
    b = bytearray([STATE_VERSION, phase])
    if phase == PHASE_REQUEST:
        b += _uvarint(len(request)) + request
    elif phase == PHASE_STREAM:
        nb = name.encode()
        b += _uvarint(len(nb)) + nb + _uvarint(nxt) + _uvarint(len(unsent)) + unsent + _uvarint(max(due, 0))
    else:
        b += _uvarint(len(unsent)) + unsent
    return bytes(b)


def decode_state(b: bytes) -> dict:
    """Decode a state record of version 1 or 2 with examples/streamer's limits."""
    if len(b) < 2:
        raise BadState(f"{len(b)} bytes, too short")
    version, phase = b[0], b[1]
    if version not in (1, STATE_VERSION):
        raise BadState(f"version {version}, want 1 or {STATE_VERSION}")
    d = _Dec(b)
    d.i = 2
    st = {"phase": phase, "request": b"", "name": "", "next": 0, "unsent": b"", "due": 0}
    if phase == PHASE_REQUEST:
        st["request"] = d.bytes_("request", MAX_REQUEST)
    elif phase == PHASE_STREAM:
        name = d.bytes_("name", MAX_NAME)
        nxt = d.uvarint("next offset")
        if nxt > 1 << 62:
            raise BadState(f"next offset {nxt} out of range")
        st["next"] = nxt
        st["unsent"] = d.bytes_("unsent", MAX_UNSENT)
        if version >= 2:
            due = d.uvarint("due time")
            if due > 1 << 62:
                raise BadState(f"due time {due} out of range")
            st["due"] = due
        if not valid_name(name):
            raise BadState(f"invalid stream name {name!r}")
        st["name"] = name.decode()
    elif phase == PHASE_CLOSING:
        st["unsent"] = d.bytes_("unsent", MAX_UNSENT)
    else:
        raise BadState(f"unknown phase {phase}")
    if d.i != len(b):
        raise BadState(f"{len(b) - d.i} trailing bytes")
    return st


class Conn:
    """One client connection, served by the loop."""

    def __init__(self, srv: "Server", sock: socket.socket) -> None:
        self.srv = srv
        self.sock = sock
        self.phase = PHASE_REQUEST
        self.req = b""
        self.name = ""
        self.next = 0
        self.pending = b""
        self.due = 0  # unix ns; 0 until streaming
        self.frozen = False
        self.finished = False
        self.tracked: Optional[handoff.Tracked] = None
        self.events = 0

    # Hooks, called from the SDK's thread.

    def freeze(self) -> bytes:
        """The freeze hook: stop the connection between two events and return its state record."""
        self.srv.freezing = True  # the loop stops its pass at the next event
        with self.srv.lock:
            if self.finished:
                raise handoff.Skip()
            self.frozen = True
            self.srv.frozen += 1
            self.srv.set_events(self, 0)
            due = self.due if self.phase == PHASE_STREAM else 0
            return encode_state(self.phase, self.req, self.name, self.next, self.pending, due)

    def resume(self) -> None:
        """The resume hook: the migration was called off, serve on."""
        with self.srv.lock:
            self.frozen = False
            self.srv.thawed()
            self.srv.schedule(self)
        self.srv.wake()

    def moved(self) -> None:
        """The moved hook: the connection is the new process's; forget it without closing it."""
        with self.srv.lock:
            self.srv.thawed()
            self.finished = True
            self.srv.conns.discard(self)
            self.srv.moved += 1


class Server:
    """The streaming server: one selectors loop."""

    def __init__(self, p: handoff.Process, ln: handoff.Listener, rate: int, tick: float) -> None:
        self.p = p
        self.ln = ln
        self.tick_ns = int(tick * 1e9)
        self.chunk = min(max(int(rate * tick), 1), MAX_UNSENT - len(OK_HEADER))
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        # While a migration freezes connections (frozen > 0) the loop
        # serves nobody and leaves the lock to the hooks, as the Go
        # streamer's connections skip their ticks: otherwise each freeze
        # would wait for a whole pass of the loop over thousands of
        # connections.
        self.idle = threading.Condition(self.lock)
        self.frozen = 0
        # freezing is set by a freeze hook before it takes the lock: the
        # loop ends its pass over the events at once instead of making the
        # hook wait for thousands of writes.
        self.freezing = False
        self.conns: set[Conn] = set()
        self.timers: list[tuple[int, int, Conn]] = []
        self.seq = 0
        self.stop = False
        self.accepted = self.imported = self.rejected = self.finished = self.moved = self.bytes_sent = 0
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.ln_registered = False
        ln.sock.setblocking(False)
        ln.watch(self.wake)

    def thawed(self) -> None:
        """One frozen connection was resumed or moved (lock held)."""
        self.frozen -= 1
        if self.frozen == 0:
            self.idle.notify_all()

    def wake(self) -> None:
        """Interrupt the loop's select (from any thread)."""
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def set_events(self, c: Conn, ev: int) -> None:
        """Watch c for ev (0: not at all), lock held."""
        if c.events == ev:
            return
        if c.events == 0:
            self.sel.register(c.sock, ev, c)
        elif ev == 0:
            self.sel.unregister(c.sock)
        else:
            self.sel.modify(c.sock, ev, c)
        c.events = ev

    def schedule(self, c: Conn) -> None:
        """Register c for what it waits for (lock held)."""
        if c.frozen or c.finished:
            return
        if c.phase == PHASE_REQUEST:
            self.set_events(c, selectors.EVENT_READ)
        elif c.pending:
            self.set_events(c, selectors.EVENT_WRITE)
        else:
            self.set_events(c, 0)
            if c.phase == PHASE_STREAM:
                if c.due == 0:
                    c.due = time.time_ns() + self.tick_ns
                self.seq += 1
                heapq.heappush(self.timers, (c.due, self.seq, c))
            else:
                self.end(c)

    def start(self, sock: socket.socket, st: Optional[dict]) -> None:
        """Track sock and serve it, from st if it was handed over (lock held)."""
        sock.setblocking(False)
        c = Conn(self, sock)
        if st is not None:
            c.phase = st["phase"]
            if c.phase == PHASE_REQUEST:
                c.req = st["request"]
            elif c.phase == PHASE_STREAM:
                c.name, c.next, c.pending = st["name"], st["next"], st["unsent"]
                c.due = st["due"] or time.time_ns()
            else:
                c.pending = st["unsent"]
        try:
            c.tracked = self.p.track(sock, freeze=c.freeze, resume=c.resume, moved=c.moved)
        except handoff.HandoffError as e:
            print(f"pystreamer: track connection: {e}; closing it", file=sys.stderr)
            sock.close()
            return
        self.conns.add(c)
        if c.phase == PHASE_REQUEST and c.req:
            self.on_request_bytes(c)
        else:
            self.schedule(c)

    def end(self, c: Conn) -> None:
        """The connection is done: untrack and close it (lock held)."""
        if c.finished:
            return
        c.finished = True
        self.set_events(c, 0)
        self.conns.discard(c)
        if c.tracked is not None:
            c.tracked.untrack()
        c.sock.close()
        self.finished += 1

    def on_request_bytes(self, c: Conn) -> None:
        """Look for the end of the request header and act on the request."""
        i = c.req.find(b"\r\n\r\n")
        if i >= 0:
            name, resp = parse_request(c.req[:i + 4])
            c.req = b""
            if resp is not None:
                self.rejected += 1
                c.phase, c.pending = PHASE_CLOSING, resp
            else:
                c.phase, c.name, c.next = PHASE_STREAM, name or "", 0
                c.pending = OK_HEADER + fill(c.name, 0, self.chunk)
                c.next = self.chunk
        elif len(c.req) >= MAX_REQUEST:
            c.req = b""
            self.rejected += 1
            c.phase, c.pending = PHASE_CLOSING, RESP_BAD_REQUEST
        self.schedule(c)

    def on_readable(self, c: Conn) -> None:
        """Read more of the request."""
        try:
            b = c.sock.recv(MAX_REQUEST - len(c.req))
        except BlockingIOError:
            return
        except OSError:
            self.end(c)
            return
        if not b:
            self.end(c)
            return
        c.req += b
        self.on_request_bytes(c)

    def on_writable(self, c: Conn) -> None:
        """Write what is pending, and the next chunk if it is due."""
        try:
            n = c.sock.send(c.pending)
        except BlockingIOError:
            return
        except OSError:
            self.end(c)
            return
        self.bytes_sent += n
        c.pending = c.pending[n:]
        if c.pending:
            return
        if c.phase == PHASE_CLOSING:
            self.end(c)
            return
        if c.due and time.time_ns() >= c.due:
            self.produce(c)
        self.schedule(c)

    def produce(self, c: Conn) -> None:
        """Generate the next chunk and move the due time one tick on (missed ticks are dropped)."""
        c.pending = fill(c.name, c.next, self.chunk)
        c.next += self.chunk
        now = time.time_ns()
        c.due += self.tick_ns
        if c.due < now - self.tick_ns:
            c.due = now + self.tick_ns

    def run_timers(self) -> Optional[float]:
        """Produce the chunks that fell due; return the seconds until the next one."""
        now = time.time_ns()
        while self.timers and self.timers[0][0] <= now and not self.freezing:
            due, _, c = heapq.heappop(self.timers)
            if c.finished or c.frozen or c.pending or c.phase != PHASE_STREAM or c.due != due:
                continue
            self.produce(c)
            self.schedule(c)
        return (self.timers[0][0] - now) / 1e9 if self.timers else None

    def update_listener(self) -> None:
        """Watch the listener unless a migration has paused it."""
        want = not self.ln.paused
        if want and not self.ln_registered:
            self.sel.register(self.ln.sock, selectors.EVENT_READ, "listener")
            self.ln_registered = True
        elif not want and self.ln_registered:
            self.sel.unregister(self.ln.sock)
            self.ln_registered = False

    def accept_some(self) -> None:
        """Accept the connections waiting, a few at a time."""
        for _ in range(64):
            try:
                sock, _ = self.ln.accept()
            except (BlockingIOError, InterruptedError):
                return
            except handoff.Moved:
                return
            except OSError as e:
                print(f"pystreamer: accept: {e}", file=sys.stderr)
                return
            self.accepted += 1
            self.start(sock, None)

    def serve(self) -> None:
        """The loop: until stopped or the sockets moved away."""
        self.lock.acquire()
        try:
            while not self.stop and not self.p.done.is_set():
                self.update_listener()
                t = self.run_timers()
                timeout = 0.1 if t is None else min(max(t, 0), 0.1)
                self.lock.release()
                try:
                    ready = self.sel.select(timeout)
                finally:
                    self.lock.acquire()
                while self.frozen > 0 and not self.stop and not self.p.done.is_set():
                    self.idle.wait(0.1)
                self.freezing = False
                for key, ev in ready:
                    if self.freezing:
                        break  # level-triggered: what is left is reported again
                    d = key.data
                    if d is None:
                        try:
                            os.read(self.wake_r, 4096)
                        except OSError:
                            pass
                    elif d == "listener":
                        if not self.ln.paused:
                            self.accept_some()
                    else:
                        c: Conn = d
                        if c.finished or c.frozen:
                            continue
                        if ev & selectors.EVENT_READ and c.phase == PHASE_REQUEST:
                            self.on_readable(c)
                        elif ev & selectors.EVENT_WRITE:
                            self.on_writable(c)
        finally:
            self.lock.release()


def main() -> int:
    """Parse the flags, join, serve, and report how it ended."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default="127.0.0.1:8080", help="TCP listen address")
    ap.add_argument("--rate", type=int, default=16384, help="body bytes per second per connection")
    ap.add_argument("--tick", type=float, default=0.1, help="pacing interval in seconds")
    ap.add_argument("--name", default="streamer", help="handoff session name")
    ap.add_argument("--socket", default=None, help="handoff agent socket (default: $HANDOFF_SOCKET or the SDK default)")
    ap.add_argument("--standby", action="store_true", help="wait for another process to hand its sockets over before serving")
    ap.add_argument("--standby-timeout", type=float, default=0, help="seconds to wait in standby (0: the SDK default)")
    ap.add_argument("--warmup", type=float, default=0, help="seconds between listening and ready (a window for fault tests)")
    ap.add_argument("--nofile", type=int, default=0, help="set the soft open-file limit (0: raise it to the hard limit)")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.nofile if a.nofile > 0 else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    print(f"pystreamer: open file limit {want} (hard {hard})", file=sys.stderr)

    stop = threading.Event()
    srv_ref: list[Server] = []

    def on_signal(signum, frame):  # type: ignore[no-untyped-def]
        stop.set()
        if srv_ref:
            srv_ref[0].stop = True
            srv_ref[0].wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        p = handoff.join(socket_path=a.socket, name=a.name, standby=a.standby,
                         standby_timeout=a.standby_timeout or None, log=log)
    except handoff.HandoffError as e:
        print(f"pystreamer: join handoff session {a.name!r}: {e}", file=sys.stderr)
        return 1
    try:
        ln = p.listen("tcp", a.addr)
    except OSError as e:
        print(f"pystreamer: listen on {a.addr}: {e}", file=sys.stderr)
        p.close()
        return 1
    inherited = p.inherited
    if a.warmup > 0:
        print(f"pystreamer: warming up for {a.warmup}s", flush=True)
        if stop.wait(a.warmup):
            return 1
    try:
        imported = p.ready()
    except handoff.HandoffError as e:
        print(f"pystreamer: complete incoming handoff of session {a.name!r}: {e}", file=sys.stderr)
        ln.close()
        p.close()
        return 1
    srv = Server(p, ln, a.rate, a.tick)
    srv_ref.append(srv)
    with srv.lock:
        decoded = []
        for ic in imported:
            try:
                decoded.append((ic.conn, decode_state(ic.state)))
            except BadState as e:
                print(f"pystreamer: imported connection: bad connection state: {e}; closing it", file=sys.stderr)
                ic.conn.close()
        decoded.sort(key=lambda d: d[1]["due"])
        for sock, st in decoded:
            srv.imported += 1
            srv.start(sock, st)
    host, port = ln.getsockname()[:2]
    print(f"streamer: serving on {host}:{port} (inherited={str(inherited).lower()}, imported {len(imported)} connections)", flush=True)
    threading.Thread(target=lambda: (p.done.wait(), srv.wake()), daemon=True).start()
    if stop.is_set():
        srv.stop = True
    srv.serve()
    moved_away = p.done.is_set()
    with srv.lock:
        if not moved_away:
            for c in list(srv.conns):
                srv.end(c)
    if not moved_away:
        ln.close()
    p.close()
    why = "moved away" if moved_away else "stopped"
    print(f"streamer: {why}: accepted={srv.accepted} imported={srv.imported} rejected={srv.rejected} "
          f"finished={srv.finished} moved={srv.moved} bytes={srv.bytes_sent}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
