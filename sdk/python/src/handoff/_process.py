"""Process: this process's membership in handoff (join, listen, track, ready,
done), with the source's and the target's side of a transaction.

The names follow the Go SDK (``sdk/``): :func:`join` is ``Join``,
:meth:`Process.listen` is ``Listen``, :meth:`Process.track` is ``Track``,
:meth:`Process.ready` is ``Ready``, :attr:`Process.done` is ``Done``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import random
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, TypeVar

from . import wire
from .errors import Aborted, HandoffError, Moved, NotSupported, Skip, StandbyTimeout

DEFAULT_SOCKET = "/run/handoff/agent.sock"
"""Where the agent listens unless ``socket_path`` or ``$HANDOFF_SOCKET`` says otherwise."""

DEFAULT_STANDBY_TIMEOUT = 300.0
"""Seconds a standby process waits for a handoff by default."""

DEFAULT_ACCEPT_GRACE = 0.1
"""Seconds a migration waits for accepted connections to be tracked."""

REJOIN_FIRST = 0.1
"""Seconds before the first attempt to join a lost agent again."""

REJOIN_MAX = 5.0
"""Most seconds between two attempts to join a lost agent again."""


def _backoff() -> Iterator[float]:
    """The rejoin schedule: REJOIN_FIRST, then twice as long each time up
    to REJOIN_MAX, every wait jittered by ±50%."""
    delay = REJOIN_FIRST
    while True:
        yield delay * (0.5 + random.random())
        delay = min(2 * delay, REJOIN_MAX)


PENDING_WAIT = 30.0
"""Seconds a process told of stored descriptors (WelcomePending) waits for Begin."""

ABORT_DRAIN_BOUND = 2.0
"""Seconds a target that called a handoff off keeps reading its agent session."""

READY_GRACE = 1.0
"""Seconds past the deadline a target that said Ready waits for the source."""

LogFunc = Callable[[str], None]
_T = TypeVar("_T")


def _default_log(line: str) -> None:
    t = time.strftime("%Y/%m/%d %H:%M:%S")
    sys.stderr.write(f"{t} {line}\n")
    sys.stderr.flush()


@dataclass
class Imported:
    """A connection received from the previous process, with the state record
    its freeze hook returned there."""

    conn: socket.socket
    state: bytes


class _Gate:
    """What a listener shares with migrations: frozen while an outgoing
    migration exports it, gated until ready() for inherited ones."""

    def __init__(self, inherited: bool) -> None:
        self.cond = threading.Condition()
        self.frozen = False
        self.moved = False
        self.closed = False
        self.busy = 0
        self.gate: Optional[threading.Event] = threading.Event() if inherited else None
        self.watchers: list[Callable[[], None]] = []
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.wake_r, self.wake_w = r, w

    def notify(self) -> None:
        if self.wake_w >= 0:
            try:
                os.write(self.wake_w, b"x")
            except OSError:
                pass
        for f in list(self.watchers):
            f()

    def open(self) -> None:
        if self.gate is not None and not self.gate.is_set():
            self.gate.set()
            self.notify()

    def close_wake(self) -> None:
        """Close the wake pipe once nobody can wait on it (closed or moved)."""
        with self.cond:
            r, w, self.wake_r, self.wake_w = self.wake_r, self.wake_w, -1, -1
            self.cond.notify_all()
        wire.close_all([r, w])


class Listener:
    """What :meth:`Process.listen` returns: a listening socket that a
    migration can stop while it exports it.

    Blocking servers call :meth:`accept`, which waits while a migration
    exports the socket (and, for an inherited socket, until :meth:`Process.ready`
    completed), and raises :class:`Moved` once the socket belongs to another
    process. Event-loop servers register :meth:`fileno` with their selector,
    call :meth:`accept` when it is readable (it raises ``BlockingIOError``
    while the listener is paused) and use :meth:`watch` to learn when to stop
    and restart watching it.
    """

    kind = wire.KIND_LISTENER

    def __init__(self, p: "Process", key: str, sock: socket.socket, inherited: bool) -> None:
        self._p = p
        self.key = key
        self.sock = sock
        self._g = _Gate(inherited)

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self.sock.fileno()

    def getsockname(self):  # type: ignore[no-untyped-def]
        """The bound address."""
        return self.sock.getsockname()

    @property
    def paused(self) -> bool:
        """True while accepting is not allowed (frozen, gated, moved or closed)."""
        g = self._g
        return g.frozen or g.moved or g.closed or (g.gate is not None and not g.gate.is_set())

    @property
    def moved(self) -> bool:
        """True once the socket belongs to another process."""
        return self._g.moved

    def watch(self, f: Callable[[], None]) -> None:
        """Call f (from any thread) whenever :attr:`paused` may have changed."""
        self._g.watchers.append(f)

    def accept(self, timeout: float | None = None) -> tuple[socket.socket, object]:
        """Accept the next connection. In blocking mode (the socket's timeout
        is None) it waits, also while a migration exports the socket; with
        the socket non-blocking it raises ``BlockingIOError`` instead.
        Raises :class:`Moved` once the socket belongs to another process."""
        c, a = self._gated("accept", self._accept_now, timeout)
        if self.sock.gettimeout() is None:
            c.setblocking(True)
        self._p._note_accepted(c)
        return c, a

    def _gated(self, what: str, op: Callable[[], _T], timeout: float | None) -> _T:
        """Run the socket operation op when a migration allows it: blocking
        callers wait (in poll, woken by a freeze), non-blocking ones get
        BlockingIOError while paused."""
        g = self._g
        blocking = self.sock.gettimeout() != 0.0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with g.cond:
                while True:
                    if g.moved:
                        raise Moved(f"{what} on {self.key}: sockets moved to another process")
                    if g.closed:
                        raise OSError(9, f"{what} on {self.key}: socket closed")
                    gated = g.gate is not None and not g.gate.is_set()
                    if not g.frozen and not gated:
                        break
                    if not blocking:
                        raise BlockingIOError(11, f"{what} on {self.key}: paused by a handoff")
                    g.cond.wait(0.05 if gated else None)
                g.busy += 1
                wake = g.wake_r
            try:
                if not blocking:
                    return op()
                pl = select.poll()
                pl.register(self.sock.fileno(), select.POLLIN)
                if wake >= 0:
                    # Readable from a freeze until the thaw: every waiter wakes.
                    pl.register(wake, select.POLLIN)
                left = None if deadline is None else max(deadline - time.monotonic(), 0) * 1000
                ev = dict(pl.poll(left))
                if self.sock.fileno() not in ev:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError(f"{what} on {self.key}: timed out")
                    continue
                with g.cond:
                    if g.frozen or g.moved or g.closed:
                        continue
                try:
                    return op()
                except BlockingIOError:
                    continue  # another thread took it
            finally:
                with g.cond:
                    g.busy -= 1
                    g.cond.notify_all()

    def _accept_now(self) -> tuple[socket.socket, object]:
        """accept that does not block. There is no MSG_DONTWAIT for accept,
        so a blocking socket is switched to non-blocking around the call;
        this happens only while the socket is not frozen, that is while no
        other process holds a copy whose flags it would change."""
        if self.sock.gettimeout() == 0.0:
            return self.sock.accept()
        self.sock.setblocking(False)
        try:
            return self.sock.accept()
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        """Close the listener in this process and stop exporting it."""
        g = self._g
        with g.cond:
            if g.closed or g.moved:
                return
            g.closed = True
            g.cond.notify_all()
        g.open()
        g.notify()
        with self._p._lock:
            self._p._listeners.pop(id(self), None)
        self.sock.close()
        g.close_wake()

    # Migration side.

    def _freeze(self) -> None:
        g = self._g
        with g.cond:
            g.frozen = True
        g.notify()
        with g.cond:
            while g.busy > 0:
                g.cond.wait()

    def _thaw(self) -> None:
        g = self._g
        with g.cond:
            g.frozen = False
            if g.wake_r >= 0:
                try:
                    while os.read(g.wake_r, 4096):
                        pass
                except OSError:
                    pass
            g.cond.notify_all()
        for f in list(g.watchers):
            f()

    def _mark_moved(self) -> None:
        g = self._g
        with g.cond:
            g.moved = True
            g.cond.notify_all()
        g.notify()
        g.close_wake()


class PacketSocket(Listener):
    """What :meth:`Process.listen_packet` returns: a datagram socket (UDP or
    unixgram) whose reads stop while a migration exports it.

    :meth:`recvfrom` behaves as :meth:`Listener.accept` does: it waits (or,
    non-blocking, raises ``BlockingIOError``) while the socket is frozen or,
    inherited, until :meth:`Process.ready`, and raises :class:`Moved` once the
    socket belongs to another process. :meth:`sendto` waits only for the
    inherited socket's gate.
    """

    kind = wire.KIND_PACKET

    def accept(self, timeout: float | None = None) -> tuple[socket.socket, object]:
        """Not for datagram sockets."""
        raise NotSupported(f"accept on datagram socket {self.key}")

    def recvfrom(self, bufsize: int, timeout: float | None = None) -> tuple[bytes, object]:
        """The next datagram and its sender."""
        return self._gated("read", lambda: self.sock.recvfrom(bufsize, socket.MSG_DONTWAIT), timeout)

    def sendto(self, data: bytes, address: object) -> int:
        """Send a datagram (after ready, for an inherited socket)."""
        g = self._g
        if g.gate is not None:
            g.gate.wait()
        if g.moved:
            raise Moved(f"write on {self.key}: sockets moved to another process")
        return self.sock.sendto(data, address)


class Tracked:
    """A connection under handoff's care (what :meth:`Process.track` returns)."""

    def __init__(self, p: "Process", conn: socket.socket, family: str,
                 freeze: Callable[[], "wire.State"], resume: Callable[[], None], moved: Optional[Callable[[], None]]) -> None:
        self._p = p
        self.conn = conn
        self.family = family
        self.freeze = freeze
        self.resume = resume
        self.moved = moved

    def untrack(self) -> None:
        """Take the connection out of handoff's care, typically just before
        the application closes it."""
        with self._p._lock:
            self._p._tracked.pop(id(self), None)


@contextlib.contextmanager
def _gc_held() -> Iterator[None]:
    """The cyclic garbage collector off for the block, as it was after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _family(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return "unix"
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return "tcp"
    raise NotSupported(f"socket family {sock.family!r} cannot be moved")


def _key(network: str, address: str) -> str:
    return network + "|" + address


def _parse_addr(network: str, address: str) -> tuple[int, object]:
    if network in ("unix", "unixgram"):
        return socket.AF_UNIX, address
    if network not in ("tcp", "tcp4", "tcp6", "udp", "udp4", "udp6"):
        raise NotSupported(f"listen on network {network!r}: only tcp, tcp4, tcp6, unix, udp, udp4, udp6 and unixgram")
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"listen {network} {address}: missing port")
    host = host.strip("[]")
    fam = socket.AF_INET6 if network.endswith("6") or ":" in host else socket.AF_INET
    if not host:
        host = "::" if fam == socket.AF_INET6 else "0.0.0.0"
    return fam, (host, int(port))


class Process:
    """This process's membership in handoff: the sockets it owns, the
    connections it tracks and its session with the agent. Made by :func:`join`."""

    def __init__(self, socket_path: str, name: str, standby: bool, standby_timeout: float,
                 accept_grace: float, log: LogFunc) -> None:
        self.socket_path = socket_path
        self.name = name
        self.standby = standby
        self.standby_timeout = standby_timeout
        self.accept_grace = accept_grace
        self._log = log
        self._agent: Optional[wire.Conn] = None
        self.session_id = 0
        """The agent's number for this process (0 without an agent)."""
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._listeners: dict[int, Listener] = {}
        self._tracked: dict[int, Tracked] = {}
        self._accepted: dict[int, float] = {}
        self._export: Optional[_Export] = None
        self._moved = False
        self._closing = False
        self._ready_done = False
        self._agent_gone = False
        self._control_run = False
        self._in: Optional[_Incoming] = None
        self.inherited = False
        """True if this process received sockets from another."""
        self._stop = threading.Event()  # close() was called: no more rejoining
        self.done = threading.Event()
        """Set once this process's sockets were handed to another process and
        the handoff committed: the application should finish and exit."""

    def logf(self, msg: str) -> None:
        """Log one line, prefixed ``handoff: ``."""
        self._log("handoff: " + msg)

    @property
    def available(self) -> bool:
        """True while this process has a session with an agent."""
        with self._lock:
            return self._agent is not None and not self._agent_gone

    # Joining.

    def _hello(self, flags: int) -> wire.Welcome:
        c, w = self._dial(flags)
        self._agent = c
        self.session_id = w.session_id
        return w

    def _dial(self, flags: int) -> tuple[wire.Conn, wire.Welcome]:
        """Open a session: Hello with flags, then the agent's Welcome."""
        c = wire.Conn.dial(self.socket_path)
        try:
            c.send(wire.HELLO, wire.Hello(wire.MIN_VERSION, wire.MAX_VERSION, wire.ROLE_APP, flags, self.name).marshal())
            c.settimeout(10)
            try:
                m = c.recv()
            except (wire.WireError, OSError) as e:
                raise HandoffError(f"wait for agent {self.socket_path}: {e}") from e
            c.settimeout(None)
            m.close_fds()
            if m.type == wire.ERROR:
                try:
                    f = wire.Failure.unmarshal(m.body)
                except wire.WireError:
                    f = wire.Failure(wire.CODE_MALFORMED, "undecodable error")
                raise HandoffError(f"agent {self.socket_path} refused the session: {f}")
            if m.type != wire.WELCOME:
                raise HandoffError(f"agent {self.socket_path}: malformed: expected welcome, got {wire.type_name(m.type)}")
            try:
                w = wire.Welcome.unmarshal(m.body)
            except wire.WireError as e:
                raise HandoffError(f"agent {self.socket_path}: malformed welcome: {e}") from e
            if w.version < wire.MIN_VERSION or w.version > wire.MAX_VERSION:
                raise HandoffError(f"agent {self.socket_path} chose protocol version {w.version}, this side speaks {wire.MIN_VERSION}..{wire.MAX_VERSION}")
        except BaseException:
            c.close()
            raise
        if w.version < 2:
            w.flags &= ~wire.WELCOME_STANDBY  # a version-1 agent knows no WelcomeStandby
        c.version = w.version
        return c, w

    def _unavailable(self, err: BaseException) -> "Process":
        if self.standby:
            raise HandoffError(f"standby needs the agent: {err}") from err
        self._log(f"handoff: unavailable, serving with fresh sockets: {err}")
        return self

    def _join(self) -> "Process":
        if self.standby:
            wire.reserve_fd_table()
        flags = wire.HELLO_STANDBY if self.standby else wire.HELLO_ASK
        try:
            w = self._hello(flags)
        except (OSError, HandoffError) as e:
            return self._unavailable(e)
        pending = bool(w.flags & wire.WELCOME_PENDING)
        told = bool(w.flags & wire.WELCOME_STANDBY)
        if not pending and not told and not self.standby:
            self._start_control()
            return self
        if told:
            self.logf(f"the agent says a predecessor will hand its sockets over; waiting up to {self.standby_timeout:g}s")
        if not self.standby:
            wire.reserve_fd_table()
        wait = PENDING_WAIT if pending and not (self.standby or told) else self.standby_timeout
        until = time.monotonic() + wait
        try:
            while True:
                try:
                    inc = self._receive(until, wait)
                    break
                except _LostBeforeBegin as e:
                    # The agent restarted or was upgraded while this process
                    # waited: join it again, and wait on for what remains
                    # of the wait.
                    self.logf(f"lost the agent while waiting for a handoff ({e}); joining it again")
                    w = self._rejoin_waiting(flags, until)
                pending = bool(w.flags & wire.WELCOME_PENDING)
                told = bool(w.flags & wire.WELCOME_STANDBY)
                if not pending and not told and not self.standby:
                    # Nothing is on its way any more: serve fresh sockets.
                    self.logf("the agent joined again has no handoff for this process; serving with fresh sockets")
                    self._start_control()
                    return self
        except StandbyTimeout:
            if told and not pending:
                # The predecessor never came: serve fresh sockets in a new
                # session the agent does not count as standby.
                self._close_agent()
                self.logf(f"no handoff arrived within {self.standby_timeout:g}s of joining; serving with fresh sockets")
                try:
                    self._hello(0)
                except (OSError, HandoffError) as e:
                    return self._unavailable(e)
                self._start_control()
                return self
            self._close_agent()
            raise
        except BaseException:
            self._close_agent()
            raise
        self._in = inc
        self.inherited = True
        return self

    def _rejoin_waiting(self, flags: int, until: float) -> wire.Welcome:
        """Join the agent again, with the Hello flags of the first join, after
        the session was lost while this process waited for a handoff: with
        the backoff of :meth:`_rejoin`, until the wait ends at ``until``
        (``time.monotonic()``), when it raises :class:`StandbyTimeout`."""
        self._close_agent()
        waits = _backoff()
        lost = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            wait = next(waits)
            if wait > until - time.monotonic():
                raise StandbyTimeout(f"the agent was lost {time.monotonic() - lost:.3f}s before the wait ended, "
                                     "and could not be joined again")
            time.sleep(wait)  # the backoff: close() cannot be called before join returns
            try:
                w = self._hello(flags)
            except (OSError, HandoffError) as e:
                if attempt == 1 or attempt % 10 == 0:
                    self.logf(f"could not join the agent again (attempt {attempt}): {e}")
                continue
            self.logf(f"joined the agent again as session {w.session_id}, {time.monotonic() - lost:.3f}s after losing it; waiting on")
            return w

    def _close_agent(self) -> None:
        a, self._agent = self._agent, None
        if a is not None:
            try:
                a.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            a.close()

    def close(self) -> None:
        """End the session with the agent. Sockets stay open and the
        application keeps serving; it just can no longer be migrated. During
        an outgoing handoff, close before everything was exported calls it
        off; after, the sockets go on to the new process as if this process
        had exited, and :attr:`done` is set."""
        with self._lock:
            a = self._agent
            self._agent_gone = True
            self._closing = True
        self._stop.set()
        if a is not None:
            try:
                a.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            if not self._control_run:
                a.close()

    # Sockets.

    def listen(self, network: str, address: str, backlog: int = 4096) -> Listener:
        """A listener for network (``tcp``, ``tcp4``, ``tcp6``, ``unix``) and
        address (``host:port`` or a path). If the previous process handed
        over a listener it opened with the same two strings (compared byte
        for byte), that socket is returned, and accepting waits until
        :meth:`ready` completed; otherwise a fresh socket is opened. Either
        way the listener is exported on the next outgoing migration."""
        k = _key(network, address)
        with self._lock:
            if self._moved:
                raise Moved(f"listen {network} {address}: sockets moved to another process")
            sock = self._in.claim_listener(k) if self._in is not None else None
        inherited = sock is not None
        if sock is None:
            fam, addr = _parse_addr(network, address)
            sock = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                if fam != socket.AF_UNIX:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
        ln = Listener(self, k, sock, inherited)
        with self._lock:
            self._listeners[id(ln)] = ln
            if inherited and self._in is not None:
                self._in.gates.append(ln)
        return ln

    def listen_packet(self, network: str, address: str) -> PacketSocket:
        """A datagram socket for network (``udp``, ``udp4``, ``udp6``,
        ``unixgram``) and address, inherited as :meth:`listen` inherits
        listeners (Go: ``ListenPacket``)."""
        if network not in ("udp", "udp4", "udp6", "unixgram"):
            raise NotSupported(f"listen_packet on network {network!r}: only udp, udp4, udp6 and unixgram")
        k = _key(network, address)
        with self._lock:
            if self._moved:
                raise Moved(f"listen_packet {network} {address}: sockets moved to another process")
            sock = self._in.packets.pop(k, None) if self._in is not None else None
        inherited = sock is not None
        if sock is None:
            fam, addr = _parse_addr(network, address)
            sock = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.bind(addr)
            except BaseException:
                sock.close()
                raise
        pc = PacketSocket(self, k, sock, inherited)
        with self._lock:
            self._listeners[id(pc)] = pc
            if inherited and self._in is not None:
                self._in.gates.append(pc)
        return pc

    def track(self, conn: socket.socket, freeze: Callable[[], "wire.State"], resume: Callable[[], None],
              moved: Optional[Callable[[], None]] = None) -> Tracked:
        """Put conn under handoff's care: the next outgoing migration calls
        freeze (which stops all I/O on it at a safe point and returns its
        state record, or raises :class:`Skip` to keep it here; the record
        may be bytes or a list of buffers, which are sent as their
        concatenation without being copied into one), then resume
        (the migration was called off: carry on) or moved (it belongs to the
        new process now: stop without closing or shutting it down; the SDK
        closes this process's copy afterwards). Raises :class:`Moved` when
        this process's sockets are already gone."""
        if freeze is None or resume is None:
            raise ValueError("track: freeze and resume hooks are required")
        t = Tracked(self, conn, _family(conn), freeze, resume, moved)
        with self._lock:
            self._accepted.pop(id(conn), None)
            self._cond.notify_all()
            if self._moved:
                raise Moved("track: sockets moved to another process")
            self._tracked[id(t)] = t
            if self._export is not None:
                self._export.late(t)
        return t

    def _note_accepted(self, c: socket.socket) -> None:
        with self._lock:
            now = time.monotonic()
            if len(self._accepted) > 1024:
                for k, at in list(self._accepted.items()):
                    if now - at > 1:
                        del self._accepted[k]
            self._accepted[id(c)] = now

    def _wait_accepted(self) -> None:
        """Wait (lock held) until connections accepted within the last second
        were tracked, or accept_grace passed."""
        deadline = time.monotonic() + self.accept_grace
        while True:
            now = time.monotonic()
            for k, at in list(self._accepted.items()):
                if now - at > 1:
                    del self._accepted[k]
            n = len(self._accepted)
            if n == 0 or now >= deadline:
                if n:
                    self.logf(f"{n} accepted connections were not tracked within {self.accept_grace:g}s; they stay in this process")
                return
            self._cond.wait(deadline - now)

    # The target's side.

    def _receive(self, until: float, wait: float) -> "_Incoming":
        """The target's transaction up to End: wait, until ``until``
        (``time.monotonic()``; ``wait`` seconds after joining), for Begin,
        then receive every batch. Raises :class:`StandbyTimeout` when
        nothing began in time, :class:`_LostBeforeBegin` when the agent
        session ended before Begin, and :class:`Aborted` for any other
        failure (reported to the agent once Begin has arrived)."""
        c = self._agent
        assert c is not None
        left = until - time.monotonic()
        if left <= 0:
            raise StandbyTimeout(f"no handoff arrived while in standby, after {wait:g}s")
        c.settimeout(left)
        try:
            m = c.recv()
        except TimeoutError:
            raise StandbyTimeout(f"no handoff arrived while in standby, after {wait:g}s") from None
        except (wire.ClosedError, ConnectionResetError) as e:
            raise _LostBeforeBegin(f"lost the agent before a handoff began: {e}") from e
        except (wire.WireError, OSError) as e:
            raise Aborted(f"incoming handoff aborted: waiting for begin: {e}") from e
        if m.type != wire.BEGIN or len(m.fds) != 1:
            n = len(m.fds)
            m.close_fds()
            raise Aborted(f"incoming handoff aborted: expected begin with one descriptor, got {wire.type_name(m.type)} with {n}")
        inc = _Incoming(self, m.txid)
        try:
            inc.begin = wire.Begin.unmarshal(m.body)
        except wire.WireError as e:
            m.close_fds()
            raise inc.abort(wire.CODE_MALFORMED, str(e)) from None
        fd, m.fds = m.fds[0], []
        try:
            inc.pair = wire.Conn.from_fd(fd)
        except wire.WireError as e:
            raise inc.abort(wire.CODE_MALFORMED, str(e)) from None
        inc.deadline = time.monotonic() + inc.begin.timeout_ms / 1000
        try:
            with _gc_held():
                inc.receive()
        finally:
            if self._agent is not None:
                self._agent.settimeout(None)
        return inc

    def ready(self) -> list[Imported]:
        """Say this process is ready to serve. In a process that received a
        handoff it completes the transaction: it returns once the old process
        has let go, with the connections it handed over, and only then may
        the application use them; inherited listeners start accepting at the
        same moment. If the handoff is called off instead, everything received
        is closed and :class:`Aborted` raised. In a fresh process it returns
        an empty list. Call it once, after :meth:`listen`."""
        with self._lock:
            if self._ready_done:
                raise HandoffError("ready called twice")
            self._ready_done = True
            inc = self._in
        if inc is None:
            return []
        with _gc_held():
            conns = inc.finish()
        self._start_control()
        return conns

    # The source's side.

    def _start_control(self) -> None:
        with self._lock:
            if self._agent is None or self._control_run:
                return
            self._control_run = True
        threading.Thread(target=self._control, name="handoff-control", daemon=True).start()

    def _control(self) -> None:
        """Serve the agent session, and the sessions that replace it when
        it is lost (docs/protocol.md, "Losing the agent, and joining again")."""
        a: Optional[wire.Conn] = self._agent
        while a is not None:
            try:
                m = a.recv()
            except (wire.WireError, OSError) as e:
                # The session ended, or a datagram failed a check (its
                # descriptors are closed) and the session can no longer be
                # trusted to be in step.
                self._lost_agent(e)
                a.close()
                a = self._rejoin()
                continue
            self._dispatch(a, m)

    def _dispatch(self, a: wire.Conn, m: wire.Msg) -> None:
        """Handle one message from the agent on session a."""
        if m.type == wire.PREPARE:
            try:
                self._on_prepare(a, m)
            except Exception as e:  # noqa: BLE001 - refuse rather than lose the control loop
                m.close_fds()
                self.logf(f"prepare {m.txid} failed: {e!r}")
                _refuse(a, m.txid, wire.CODE_EXPORT, f"prepare: {e!r}")
        elif m.type == wire.ABORT:
            m.close_fds()
            try:
                f = wire.Failure.unmarshal(m.body)
            except wire.WireError as e:
                f = wire.Failure(wire.CODE_MALFORMED, str(e))
            with self._lock:
                x = self._export
            if x is not None and x.txid == m.txid and x.agent is a:
                x.agent_event(f)
        elif m.type == wire.ERROR:
            m.close_fds()
            try:
                f = wire.Failure.unmarshal(m.body)
            except wire.WireError:
                f = wire.Failure(wire.CODE_MALFORMED, "undecodable error")
            self.logf(f"agent reported an error: {f}")
        else:
            m.close_fds()
            self.logf(f"ignored unexpected {wire.type_name(m.type)} message from the agent")

    def _lost_agent(self, e: BaseException) -> None:
        with self._lock:
            gone = self._agent_gone
            self._agent_gone = True
            x = self._export
        if x is not None:
            x.agent_event(wire.Failure(wire.CODE_AGENT_CLOSED, f"lost the agent: {e}"))
        if not gone and not self._stop.is_set():
            self.logf(f"lost the agent ({e}); serving on, and joining it again")

    def _rejoin(self) -> Optional[wire.Conn]:
        """Join the agent again under the same name, with backoff (100 ms
        doubling to 5 s, each wait jittered by half), once the migration
        that was running has ended. None when there is nothing more to do:
        close() was called or the sockets moved away."""
        waits = _backoff()
        lost = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            if self._stop.wait(next(waits)):
                return None
            with self._lock:
                moved, busy = self._moved, self._export is not None
            if moved:
                return None
            if busy:
                continue  # the aborted migration is still resuming
            try:
                c, w = self._dial(0)
            except (OSError, HandoffError) as e:
                if attempt == 1 or attempt % 10 == 0:
                    self.logf(f"could not join the agent again (attempt {attempt}): {e}")
                continue
            if w.flags & wire.WELCOME_PENDING:
                # Stored descriptors wait for a new process of this name;
                # this one serves already and cannot take them.
                c.close()
                self.logf(f"the agent holds stored descriptors for {self.name!r}; they are for a new process, not this one: joining again later")
                continue
            with self._lock:
                if self._closing or self._moved:
                    c.close()
                    return None
                self._agent, self.session_id, self._agent_gone = c, w.session_id, False
            self.logf(f"joined the agent again as session {w.session_id}, {time.monotonic() - lost:.3f}s after losing it; migratable again")
            return c

    def _send_agent(self, typ: int, body: bytes = b"", fds: tuple[int, ...] | list[int] = (), txid: int = 0, seq: int = 0, flags: int = 0) -> None:
        a = self._agent
        if a is None:
            raise wire.ClosedError("no agent session")
        a.send(typ, body, fds, txid=txid, seq=seq, flags=flags)

    def _on_prepare(self, a: wire.Conn, m: wire.Msg) -> None:
        try:
            prep = wire.Prepare.unmarshal(m.body)
            err = None
        except wire.WireError as e:
            prep, err = wire.Prepare(), e
        if err is not None or len(m.fds) != 1:
            n = len(m.fds)
            m.close_fds()
            _refuse(a, m.txid, wire.CODE_MALFORMED, f"prepare with {n} descriptors: {err}")
            return
        fd, m.fds = m.fds[0], []  # owned by the pair from here, or closed by from_fd
        try:
            pair = wire.Conn.from_fd(fd)
        except wire.WireError as e:
            _refuse(a, m.txid, wire.CODE_MALFORMED, str(e))
            return
        with self._lock:
            if self._moved or self._export is not None:
                busy = True
            else:
                busy = False
                x = _Export(self, a, m.txid, prep, pair)
                self._export = x
        if busy:
            pair.close()
            _refuse(a, m.txid, wire.CODE_BUSY, "this process is already migrating or has moved")
            return
        threading.Thread(target=x.run, name=f"handoff-export-{m.txid}", daemon=True).start()


class _LostBeforeBegin(HandoffError):
    """The agent session ended while this process waited for Begin: nothing
    was received, and the process may join again (Go: ``errLostBeforeBegin``).
    Join handles it; it never reaches the application."""


def _refuse(a: wire.Conn, txid: int, code: int, reason: str) -> None:
    """Answer a Prepare on session a with Abort."""
    try:
        a.send(wire.ABORT, wire.Failure(code, reason).marshal(), txid=txid)
    except (OSError, wire.WireError):
        pass


class _Incoming:
    """A handoff this process is receiving, from Begin until ready() finishes it."""

    def __init__(self, p: Process, txid: int) -> None:
        self.p = p
        self.txid = txid
        self.begin = wire.Begin()
        self.pair: Optional[wire.Conn] = None
        self.listeners: dict[str, socket.socket] = {}
        self.packets: dict[str, socket.socket] = {}
        self.conns: list[Imported] = []
        self.gates: list[Listener] = []
        self.deadline = 0.0
        self.ended = False

    def claim_listener(self, k: str) -> Optional[socket.socket]:
        return self.listeners.pop(k, None)

    def close_all(self) -> None:
        """Drop everything received: the old process still has its copies."""
        for s in list(self.listeners.values()) + list(self.packets.values()):
            s.close()
        self.listeners.clear()
        self.packets.clear()
        for ic in self.conns:
            ic.conn.close()
        self.conns = []
        for ln in self.gates:
            with ln._g.cond:
                ln._g.closed = True
                ln._g.cond.notify_all()
            ln._g.open()
            ln.sock.close()
            ln._g.close_wake()
        self.gates = []
        if self.pair is not None:
            self.pair.close()

    def abort(self, code: int, reason: str) -> Aborted:
        """Drop what arrived and tell the source (on the pair, first) and the
        agent why; returns the exception to raise."""
        f = wire.Failure(code, reason)
        if self.pair is not None:
            # The source may learn of the close on the pair before the agent
            # relays our Abort: say why there first, then close it.
            try:
                self.pair.send(wire.ABORT, f.marshal(), txid=self.txid)
            except (OSError, wire.WireError):
                pass
        self.close_all()
        sent = True
        try:
            self.p._send_agent(wire.ABORT, f.marshal(), txid=self.txid)
        except (OSError, wire.WireError):
            sent = False
        self.p.logf(f"incoming handoff {self.txid} aborted: {f}")
        if sent and not self.ended:
            self._drain_agent()
        return Aborted(f"incoming handoff aborted: {f}")

    def _drain_agent(self) -> None:
        """Read what the agent still sends for this transaction until it ends
        it, so that closing the session with batches queued unread does not
        make the agent see a reset instead of our Abort."""
        a = self.p._agent
        if a is None:
            return
        end = time.monotonic() + ABORT_DRAIN_BOUND
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return
                a.settimeout(left)
                try:
                    m = a.recv()
                except (wire.ClosedError, OSError):
                    return
                except wire.WireError:
                    continue  # its descriptors are closed; keep draining
                m.close_fds()
                if m.txid == self.txid and m.type in (wire.ABORT, wire.END):
                    return
        finally:
            a.settimeout(None)

    def receive(self) -> None:
        a = self.p._agent
        assert a is not None
        got = wire.Summary()
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self.abort(wire.CODE_IMPORT, "receive from agent: i/o timeout")
            a.settimeout(left)
            try:
                m = a.recv()
            except TimeoutError:
                raise self.abort(wire.CODE_IMPORT, "receive from agent: i/o timeout") from None
            except (wire.WireError, OSError) as e:
                raise self.abort(wire.CODE_IMPORT, f"receive from agent: {e}") from None
            if m.txid != self.txid:
                m.close_fds()
                raise self.abort(wire.CODE_UNEXPECTED, f"{wire.type_name(m.type)} for transaction {m.txid} during {self.txid}")
            if m.type == wire.BATCH:
                try:
                    bi = wire.decode_batch(m.body, len(m.fds))
                except wire.WireError as e:
                    m.close_fds()
                    raise self.abort(wire.CODE_MALFORMED, f"decode batch: {e}") from None
                for e in bi.entries:
                    if e.kind == wire.KIND_LISTENER:
                        got.listeners += 1
                    elif e.kind == wire.KIND_CONN:
                        got.conns += 1
                    else:
                        got.packets += 1
                got.batches += 1
                err = self.adopt(bi, m.fds)
                if err is not None:
                    raise self.abort(wire.CODE_IMPORT, err)
            elif m.type == wire.END:
                m.close_fds()
                try:
                    s = wire.Summary.unmarshal(m.body)
                except wire.WireError as e:
                    raise self.abort(wire.CODE_MALFORMED, str(e)) from None
                self.ended = True
                if (s.listeners, s.conns, s.packets, s.batches) != (got.listeners, got.conns, got.packets, got.batches):
                    raise self.abort(wire.CODE_MALFORMED,
                                     f"end announces {s.listeners} listeners, {s.conns} connections, {s.packets} packet sockets in {s.batches} batches; "
                                     f"received {got.listeners}, {got.conns}, {got.packets} in {got.batches}")
                return
            elif m.type == wire.ABORT:
                m.close_fds()
                try:
                    f = wire.Failure.unmarshal(m.body)
                except wire.WireError as e:
                    f = wire.Failure(wire.CODE_MALFORMED, str(e))
                self.close_all()
                raise Aborted(f"incoming handoff aborted by the agent: {f}")
            else:
                m.close_fds()
                raise self.abort(wire.CODE_UNEXPECTED, f"unexpected {wire.type_name(m.type)} during a handoff")

    def adopt(self, bi: wire.BatchInfo, fds: list[int]) -> Optional[str]:
        """Turn one batch's descriptors into sockets; on failure every
        descriptor of the batch not yet adopted is closed and the reason
        returned."""
        try:
            if bi.memfd:
                try:
                    wire.read_states(fds[-1], bi)
                except (wire.WireError, OSError) as e:
                    return f"state memfd: {e}"
            for i, e in enumerate(bi.entries):
                fd = fds[i]
                try:
                    s = socket.socket(fileno=fd)
                except OSError as err:
                    return f"adopt descriptor {i} of batch (kind {e.kind}): {err}"
                fds[i] = -1  # owned by the socket object now
                if e.kind == wire.KIND_CONN:
                    self.conns.append(Imported(s, e.state))
                elif e.kind == wire.KIND_LISTENER:
                    old = self.listeners.pop(e.key, None)
                    if old is not None:
                        old.close()
                    self.listeners[e.key] = s
                else:
                    old = self.packets.pop(e.key, None)
                    if old is not None:
                        old.close()
                    self.packets[e.key] = s
            return None
        finally:
            wire.close_all(fds)  # the memfd, and anything not adopted

    def finish(self) -> list[Imported]:
        p = self.p
        for k in self.listeners:
            p.logf(f"inherited listener {k} was not claimed by listen; closing it")
        for k in self.packets:
            p.logf(f"inherited packet socket {k} was not claimed; closing it")
        assert self.pair is not None
        send_err: Optional[BaseException] = None
        try:
            self.pair.send(wire.READY, wire.Summary(conns=len(self.conns)).marshal(), txid=self.txid)
        except (OSError, wire.WireError) as e:
            # The source closed its end: only what the pair holds tells
            # whether it decided (Commit or Abort queued) or exited.
            send_err = e
            p.logf(f"could not tell the source we are ready ({e}); reading what it left on the pair")
        self.pair.settimeout(max(self.deadline + READY_GRACE - time.monotonic(), 0.001))
        try:
            m: Optional[wire.Msg] = self.pair.recv()
            err: Optional[BaseException] = None
        except BaseException as e:  # noqa: BLE001 - classified below
            m, err = None, e
        if m is not None and m.type == wire.COMMIT:
            m.close_fds()
        elif m is not None and m.type == wire.ABORT:
            m.close_fds()
            try:
                f = wire.Failure.unmarshal(m.body)
            except wire.WireError as e:
                f = wire.Failure(wire.CODE_MALFORMED, str(e))
            self.close_all()
            p.logf(f"incoming handoff {self.txid} aborted by the source: {f}")
            raise Aborted(f"incoming handoff aborted by the source: {f}")
        elif isinstance(err, wire.ClosedError):
            p.logf("the source closed the transaction without a decision after exporting everything; taking over")
        elif isinstance(err, TimeoutError):
            raise self.abort(wire.CODE_DEADLINE, f"the source decided nothing within the deadline of {self.begin.timeout_ms}ms")
        else:
            if m is not None:
                m.close_fds()
                why = f"malformed: {wire.type_name(m.type)} on the pair"
            else:
                why = str(err)
            if send_err is not None:
                why = f"tell the source we are ready: {send_err}; then {why}"
            raise self.abort(wire.CODE_UNEXPECTED, why)
        for s in list(self.listeners.values()) + list(self.packets.values()):
            s.close()
        self.listeners.clear()
        self.packets.clear()
        conns, self.conns = self.conns, []
        self.pair.close()
        for ln in self.gates:
            ln._g.open()
        with p._lock:
            p._in = None
        try:
            p._send_agent(wire.SERVING, wire.stamp(), txid=self.txid)
        except (OSError, wire.WireError):
            pass
        return conns


class _Export:
    """One outgoing migration: the source's side of the transaction."""

    def __init__(self, p: Process, agent: wire.Conn, txid: int, prep: wire.Prepare, pair: wire.Conn) -> None:
        self.p = p
        self.agent = agent  # the session the Prepare came on: everything about it goes there
        self.txid = txid
        self.prep = prep
        self.pair = pair
        self.events: "queue.Queue[tuple[str, object]]" = queue.Queue()
        self.lock = threading.Lock()
        self.decided = False
        self.collect = False
        self.late_q: list[Tracked] = []
        self.frozen: list[Tracked] = []
        self.listeners: list[Listener] = []
        self.seq = 0
        self.items: list[tuple[wire.Entry, int]] = []
        self.body_inline = 8
        self.body_keys = 8
        self.sum = wire.Summary()
        self.agent_said = False  # an agent event is queued: checked per connection without a lock

    def agent_event(self, f: wire.Failure) -> None:
        self.agent_said = True
        self.events.put(("agent", f))

    def late(self, t: Tracked) -> None:
        with self.lock:
            if self.collect:
                self.late_q.append(t)

    def _pending_agent(self) -> Optional[wire.Failure]:
        if not self.agent_said:
            return None
        try:
            kind, v = self.events.get_nowait()
        except queue.Empty:
            return None
        assert kind == "agent"
        return v  # type: ignore[return-value]

    # Batches.

    def _add(self, e: wire.Entry, fd: int) -> None:
        kb = len(e.key) if e.key.isascii() else len(e.key.encode())
        sl = wire.state_len(e.state)
        inline = 8 + kb + sl
        keys = 8 + kb
        n = len(self.items)
        # The Go SDK's rule (section 9), plus the body limit of a memfd batch.
        if n == wire.MAX_FDS or (n == wire.MAX_FDS - 1 and self.body_inline + inline > wire.MAX_BODY) or \
                (n > 0 and self.body_keys + keys > wire.MAX_BODY):
            self._flush()
        if not self.items:
            self.body_inline = self.body_keys = 8
        self.items.append((e, fd))
        self.body_inline += inline
        self.body_keys += keys
        if e.kind == wire.KIND_LISTENER:
            self.sum.listeners += 1
        elif e.kind == wire.KIND_CONN:
            self.sum.conns += 1
        else:
            self.sum.packets += 1
        self.sum.state_bytes += sl

    def _flush(self) -> None:
        if not self.items:
            return
        items, self.items = self.items, []
        entries = [e for e, _ in items]
        fds = [fd for _, fd in items]
        body, flags, states = wire.marshal_batch(entries)
        memfd = -1
        if flags & wire.BATCH_MEMFD:
            memfd = wire.new_state_memfd(states)
            fds.append(memfd)
        try:
            self.agent.send(wire.BATCH, body, fds, txid=self.txid, seq=self.seq, flags=flags)
        finally:
            if memfd >= 0:
                os.close(memfd)
        self.seq += 1
        self.sum.batches += 1

    # The transaction.

    def run(self) -> None:
        """The source's transaction: freeze, export, then commit or resume.
        Runs with the cyclic garbage collector off, as the Go SDK holds its
        collector: a full collection during the pause would stretch it."""
        with _gc_held():
            try:
                self._run()
            except Exception as e:  # noqa: BLE001 - a bug or a hook's surprise must not leave connections frozen
                self.abort(wire.Failure(wire.CODE_EXPORT, f"export: {e!r}"), True)

    def _run(self) -> None:
        p = self.p
        freeze_start = wire.monotonic_ns()
        deadline = time.monotonic() + self.prep.timeout_ms / 1000
        with p._lock:
            lns = list(p._listeners.values())
        # Listeners, then packet sockets, as the Go SDK orders them.
        if self.prep.what & wire.MOVE_LISTENERS:
            self.listeners = [ln for ln in lns if ln.kind == wire.KIND_LISTENER]
        if self.prep.what & wire.MOVE_PACKETS:
            self.listeners += [ln for ln in lns if ln.kind == wire.KIND_PACKET]
        for ln in self.listeners:
            ln._freeze()
        conns: list[Tracked] = []
        with p._lock:
            if self.prep.what & wire.MOVE_CONNS:
                p._wait_accepted()
                conns = list(p._tracked.values())
                with self.lock:
                    self.collect = True
        try:
            for ln in self.listeners:
                self._add(wire.Entry(ln.kind, ln.key), ln.fileno())
            i = 0
            while True:
                if i >= len(conns):
                    with self.lock:
                        more, self.late_q = self.late_q, []
                        if not more:
                            self.collect = False
                    if not more:
                        break
                    conns.extend(more)
                t = conns[i]
                i += 1
                f = self._pending_agent()
                if f is not None:
                    self.abort(f, True)
                    return
                if time.monotonic() >= deadline:
                    self.abort(wire.Failure(wire.CODE_DEADLINE, f"deadline of {self.prep.timeout_ms}ms passed while freezing connections"), True)
                    return
                try:
                    state = t.freeze()
                except Skip:
                    continue
                except Exception as e:  # noqa: BLE001 - the hook's failure aborts
                    self.abort(wire.Failure(wire.CODE_EXPORT, f"freeze connection: {e!r}"), True)
                    return
                with self.lock:
                    self.frozen.append(t)
                try:
                    fd = t.conn.fileno()
                except OSError as e:
                    self.abort(wire.Failure(wire.CODE_EXPORT, f"export connection: {e}"), True)
                    return
                if fd < 0:
                    self.abort(wire.Failure(wire.CODE_EXPORT, "export connection: socket already closed"), True)
                    return
                self._add(wire.Entry(wire.KIND_CONN, t.family, state), fd)
            self._flush()
        except (OSError, wire.WireError) as e:
            self.abort(wire.Failure(wire.CODE_EXPORT, f"send batch {self.seq}: {e}"), True)
            return
        f = self._pending_agent()
        if f is not None:
            self.abort(f, True)
            return
        s = self.sum
        s.freeze_start_ns = freeze_start
        s.export_done_ns = wire.monotonic_ns()
        try:
            self.agent.send(wire.EXPORTED, s.marshal(), txid=self.txid)
        except (OSError, wire.WireError) as e:
            self.abort(wire.Failure(wire.CODE_AGENT_CLOSED, f"send exported: {e}"), True)
            return
        threading.Thread(target=self._read_pair, name="handoff-pair", daemon=True).start()
        while True:
            left = deadline - time.monotonic()
            try:
                kind, v = self.events.get(timeout=max(left, 0))
            except queue.Empty:
                self.abort(wire.Failure(wire.CODE_DEADLINE, f"deadline of {self.prep.timeout_ms}ms passed waiting for the target to be ready"), True)
                return
            if kind == "agent":
                with p._lock:
                    leaving = p._closing
                if leaving:
                    # The application is shutting down: the target (or the
                    # agent's store) holds everything; let go as an exit would.
                    self.let_go()
                else:
                    self.abort(v, True)  # type: ignore[arg-type]
                return
            if kind == "ready":
                self.commit()
                return
            if kind == "target-abort":
                self.abort(v, True)  # type: ignore[arg-type]
                return
            self.abort(wire.Failure(wire.CODE_TARGET_LOST, f"target went away before it was ready: {v}"), True)
            return

    def _read_pair(self) -> None:
        try:
            m = self.pair.recv()
        except BaseException as e:  # noqa: BLE001 - reported as the target's loss
            self.events.put(("pair-error", e))
            return
        m.close_fds()
        if m.type == wire.READY:
            self.events.put(("ready", None))
        elif m.type == wire.ABORT:
            try:
                f = wire.Failure.unmarshal(m.body)
            except wire.WireError as e:
                f = wire.Failure(wire.CODE_MALFORMED, str(e))
            f.reason = "target: " + f.reason
            self.events.put(("target-abort", f))
        else:
            self.events.put(("pair-error", f"malformed: {wire.type_name(m.type)} on the pair, expected ready"))

    def decide(self) -> Optional[list[Tracked]]:
        with self.lock:
            if self.decided:
                return None
            self.decided = True
            self.collect = False
            return list(self.frozen)

    def commit(self) -> None:
        frozen = self.decide()
        if frozen is None:
            return
        try:
            self.pair.send(wire.COMMIT, txid=self.txid)
        except (OSError, wire.WireError) as e:
            # The target died after Ready: nobody else holds the sockets.
            self.undo(frozen, wire.Failure(wire.CODE_TARGET_LOST, f"target went away after ready: {e}"), True)
            return
        self._close_pair()
        self.moved(frozen)

    def let_go(self) -> None:
        frozen = self.decide()
        if frozen is None:
            return
        self._close_pair()
        self.p.logf("closed during a handoff after exporting everything: letting the new process take over")
        self.moved(frozen)

    def _close_pair(self) -> None:
        try:
            self.pair.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.pair.close()

    def moved(self, frozen: list[Tracked]) -> None:
        p = self.p
        with p._lock:
            p._moved = True
            p._export = None
            for t in frozen:
                p._tracked.pop(id(t), None)
        try:
            self.agent.send(wire.COMMITTED, wire.stamp(), txid=self.txid)
        except (OSError, wire.WireError):
            pass
        for ln in self.listeners:
            ln._mark_moved()
            with p._lock:
                p._listeners.pop(id(ln), None)
            ln.sock.close()  # never unlinks a unix socket's path
        for t in frozen:
            if t.moved is not None:
                try:
                    t.moved()
                except Exception as e:  # noqa: BLE001 - a hook's failure must not keep copies open
                    p.logf(f"moved hook failed: {e!r}")
            t.conn.close()
        s = self.sum
        p.logf(f"moved {s.listeners} listeners, {s.packets} packet sockets and {s.conns} connections to the new process")
        p.done.set()

    def abort(self, f: wire.Failure, tell: bool) -> None:
        frozen = self.decide()
        if frozen is None:
            return
        self.undo(frozen, f, tell)

    def undo(self, frozen: list[Tracked], f: wire.Failure, tell: bool) -> None:
        p = self.p
        try:
            self.pair.send(wire.ABORT, f.marshal(), txid=self.txid)
        except (OSError, wire.WireError):
            pass
        self._close_pair()
        for ln in self.listeners:
            ln._thaw()
        for t in frozen:
            try:
                t.resume()
            except Exception as e:  # noqa: BLE001
                p.logf(f"resume hook failed: {e!r}")
        with p._lock:
            p._export = None
            gone = p._agent_gone
        if tell and not gone:
            try:
                self.agent.send(wire.ABORT, f.marshal(), txid=self.txid)
            except (OSError, wire.WireError):
                pass
        p.logf(f"migration {self.txid} aborted, serving on: {f}")


def join(socket_path: Optional[str] = None, name: Optional[str] = None, standby: bool = False,
         standby_timeout: Optional[float] = None, accept_grace: Optional[float] = None,
         log: Optional[LogFunc] = None) -> Process:
    """Connect this process to the agent (Go: ``Join``).

    When stored descriptors are pending for this process, when ``standby``
    is set, or when the agent says that a predecessor will hand over to it
    (asked with ``HelloAsk`` unless ``standby`` is set), the sockets are
    received before join returns; claim them with :meth:`Process.listen`
    and :meth:`Process.ready`. Without a reachable agent join logs one line
    and returns a Process that uses fresh sockets. A process the agent told
    to wait, to which nothing was handed within ``standby_timeout``, logs so
    and joins again to serve fresh sockets. A process that loses the agent
    while it waits, before a handoff began, joins it again with the flags
    of its first Hello and waits on for what remains of its wait; if the
    agent it joined has nothing for it (and ``standby`` is not set), it
    serves fresh sockets.

    Raises :class:`Aborted` when an incoming handoff failed, and
    :class:`StandbyTimeout` when a standby wait that ``standby`` asked for
    ended without one.

    ``socket_path`` defaults to ``$HANDOFF_SOCKET``, else
    :data:`DEFAULT_SOCKET`; ``name`` to ``$HANDOFF_NAME``, else the base
    name of ``sys.argv[0]``.
    """
    sp = socket_path or os.environ.get("HANDOFF_SOCKET") or DEFAULT_SOCKET
    nm = name or os.environ.get("HANDOFF_NAME") or os.path.basename(sys.argv[0] or "python")
    st = standby_timeout if standby_timeout and standby_timeout > 0 else DEFAULT_STANDBY_TIMEOUT
    ag = accept_grace if accept_grace and accept_grace > 0 else DEFAULT_ACCEPT_GRACE
    p = Process(sp, nm, standby, st, ag, log or _default_log)
    return p._join()
