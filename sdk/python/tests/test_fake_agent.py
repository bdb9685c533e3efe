"""The Python SDK against a fake agent that sends what the real one never
would: truncated and oversized datagrams, wrong descriptor counts, bad
bodies, messages out of place. Each must end in a clear exception (or, for
a serving process, a log line), with the right Abort sent, no descriptor
left open, and the application still serving."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import time
import unittest
from typing import Callable, Optional

import handoff
from handoff import _process, wire


def fd_count() -> int:
    """Descriptors open in this process."""
    return len(os.listdir("/proc/self/fd"))


class FakeAgent:
    """A listening agent socket whose one session runs script(conn)."""

    def __init__(self, welcome_flags: int = 0, version: int = 2) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="hofake-")
        self.path = os.path.join(self.dir.name, "agent.sock")
        self.ln = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.ln.bind(self.path)
        self.ln.listen(4)
        self.welcome_flags = welcome_flags
        self.version = version
        self.got: list[wire.Msg] = []
        self.hello: Optional[wire.Hello] = None
        self.err: Optional[BaseException] = None
        self.thread: Optional[threading.Thread] = None

    def run(self, script: Callable[[wire.Conn], None]) -> None:
        """Serve one session in a thread."""
        def serve() -> None:
            c: Optional[wire.Conn] = None
            try:
                s, _ = self.ln.accept()
                c = wire.Conn(s)
                m = c.recv()
                self.hello = wire.Hello.unmarshal(m.body)
                self.hello_header_version = m.version
                c.version = min(self.version, 2)
                c.send(wire.WELCOME, wire.Welcome(self.version, self.welcome_flags, os.getpid(), 1).marshal())
                script(c)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.err = e
            finally:
                if c is not None:
                    c.close()
        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def recv(self, c: wire.Conn, timeout: float = 10) -> wire.Msg:
        """The next message from the SDK, recorded."""
        c.settimeout(timeout)
        m = c.recv()
        m.close_fds()
        self.got.append(m)
        return m

    def accept(self, welcome_flags: int = 0, session_id: int = 2, timeout: float = 10) -> tuple[wire.Conn, wire.Hello]:
        """The next session (a process joining again): its Hello, answered
        with a version-2 Welcome carrying welcome_flags."""
        self.ln.settimeout(timeout)
        s, _ = self.ln.accept()
        c = wire.Conn(s)
        c.settimeout(timeout)
        h = wire.Hello.unmarshal(c.recv().body)
        c.version = 2
        c.send(wire.WELCOME, wire.Welcome(2, welcome_flags, os.getpid(), session_id).marshal())
        c.settimeout(None)
        return c, h

    def finish(self) -> None:
        """Wait for the script and close everything the fake agent holds."""
        if self.thread is not None:
            self.thread.join(20)
        self.ln.close()
        self.dir.cleanup()
        if self.err is not None:
            raise self.err


def begin(c: wire.Conn, txid: int = 7) -> socket.socket:
    """Send Begin with the target's end of a pair; return the other end."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    c.send(wire.BEGIN, wire.Begin(10000, 1, "source").marshal(), [b.fileno()], txid=txid)
    b.close()
    return a


def send_listener_and_conn(c: wire.Conn, srv: socket.socket, peers: list[socket.socket]) -> None:
    """Sends transaction 7's one batch, as the agent relays it (a fresh
    listener and a connection to srv, whose client end joins peers), and
    its End; closes this side's copies."""
    cl = socket.create_connection(srv.getsockname())
    peers.append(cl)
    s, _ = srv.accept()
    ln = socket.socket()
    ln.bind(("127.0.0.1", 0))
    ln.listen()
    es = [wire.Entry(wire.KIND_LISTENER, "tcp|x"), wire.Entry(wire.KIND_CONN, "tcp", b"st")]
    body, _, _ = wire.marshal_batch(es)
    c.send(wire.BATCH, body, [ln.fileno(), s.fileno()], txid=7)
    ln.close()
    s.close()
    c.send(wire.END, wire.Summary(listeners=1, conns=1, batches=1).marshal(), txid=7)


def raw(c: wire.Conn, data: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    c.sock.sendmsg([data], anc)


class Target(unittest.TestCase):
    """A standby target fed bad input during an import."""

    def import_fails(self, feed: Callable[[wire.Conn, socket.socket], None], code: int, words: str) -> None:
        before = fd_count()
        agent = FakeAgent()
        pair_seen: list[wire.Msg] = []

        def script(c: wire.Conn) -> None:
            end = begin(c)
            feed(c, end)
            m = agent.recv(c)
            self.assertEqual(m.type, wire.ABORT)
            end.settimeout(5)
            try:
                pm = wire.Conn(end).recv()
                pm.close_fds()
                pair_seen.append(pm)
            except (wire.WireError, OSError):
                pass
            end.close()

        agent.run(script)
        logs: list[str] = []
        with self.assertRaises(handoff.Aborted) as cm:
            handoff.join(socket_path=agent.path, name="t", standby=True, standby_timeout=10, log=logs.append)
        agent.finish()
        self.assertIn(words, str(cm.exception))
        f = wire.Failure.unmarshal(agent.got[-1].body)
        self.assertEqual(f.code, code, f"abort {f}")
        self.assertEqual([m.type for m in pair_seen], [wire.ABORT], "the source must hear the Abort on the pair first")
        self.assertEqual(fd_count(), before, "descriptors leaked: " + " ".join(sorted(os.listdir("/proc/self/fd"))))

    def fds(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            a, b = socket.socketpair()
            out.append(a.detach())
            b.close()
        return out

    def send_and_close(self, c: wire.Conn, typ: int, body: bytes, fds: list[int], **kw: int) -> None:
        try:
            c.send(typ, body, fds, **kw)
        finally:
            wire.close_all(fds)

    def test_oversized_datagram(self) -> None:
        def feed(c: wire.Conn, _: socket.socket) -> None:
            fds = self.fds(3)
            raw(c, wire.encode_header(2, wire.BATCH, 0, 7, 0, 3, 0) + b"\0" * (wire.MAX_BODY + 100), fds)
            wire.close_all(fds)
        self.import_fails(feed, wire.CODE_IMPORT, "truncated")

    def test_truncated_datagram(self) -> None:
        def feed(c: wire.Conn, _: socket.socket) -> None:
            fds = self.fds(2)
            raw(c, wire.encode_header(2, wire.BATCH, 0, 7, 0, 2, 0)[:20], fds)
            wire.close_all(fds)
        self.import_fails(feed, wire.CODE_IMPORT, "shorter than its header")

    def test_wrong_fd_count_in_header(self) -> None:
        def feed(c: wire.Conn, _: socket.socket) -> None:
            body, _, _ = wire.marshal_batch([wire.Entry(wire.KIND_CONN, "tcp", b"s")] * 2)
            fds = self.fds(2)
            raw(c, wire.encode_header(2, wire.BATCH, 0, 7, 0, 3, len(body)) + body, fds)
            wire.close_all(fds)
        self.import_fails(feed, wire.CODE_IMPORT, "descriptors")

    def test_wrong_fd_count_in_batch(self) -> None:
        def feed(c: wire.Conn, _: socket.socket) -> None:
            body, _, _ = wire.marshal_batch([wire.Entry(wire.KIND_CONN, "tcp", b"s")] * 3)
            self.send_and_close(c, wire.BATCH, body, self.fds(2), txid=7)
        self.import_fails(feed, wire.CODE_MALFORMED, "descriptors")

    def test_bad_batch_body(self) -> None:
        def feed(c: wire.Conn, _: socket.socket) -> None:
            body, _, _ = wire.marshal_batch([wire.Entry(wire.KIND_CONN, "tcp", b"state")])
            self.send_and_close(c, wire.BATCH, body[:-2], self.fds(1), txid=7)
        self.import_fails(feed, wire.CODE_MALFORMED, "malformed")

    def test_unsealed_memfd(self) -> None:
        def feed(c: wire.Conn, _: socket.socket) -> None:
            es = [wire.Entry(wire.KIND_CONN, "tcp", b"x" * 40000) for _ in range(2)]
            body, flags, states = wire.marshal_batch(es)
            good = self.fds(2)
            mfd = os.memfd_create("bad", os.MFD_CLOEXEC)
            os.write(mfd, b"".join(states))
            self.send_and_close(c, wire.BATCH, body, good + [mfd], txid=7, flags=flags)
        self.import_fails(feed, wire.CODE_IMPORT, "not sealed")

    def test_end_counts_differ(self) -> None:
        def feed(c: wire.Conn, _: socket.socket) -> None:
            body, _, _ = wire.marshal_batch([wire.Entry(wire.KIND_CONN, "tcp", b"s")])
            self.send_and_close(c, wire.BATCH, body, self.fds(1), txid=7)
            c.send(wire.END, wire.Summary(conns=2, batches=1).marshal(), txid=7)
        self.import_fails(feed, wire.CODE_MALFORMED, "end announces")

    def test_error_during_import(self) -> None:
        def feed(c: wire.Conn, _: socket.socket) -> None:
            c.send(wire.ERROR, wire.Failure(wire.CODE_INTERNAL, "hm").marshal())
        self.import_fails(feed, wire.CODE_UNEXPECTED, "Error for transaction 0")

    def test_other_type_during_import(self) -> None:
        def feed(c: wire.Conn, _: socket.socket) -> None:
            c.send(wire.PREPARE, wire.Prepare().marshal(), txid=7)
        self.import_fails(feed, wire.CODE_UNEXPECTED, "unexpected Prepare")

    def test_begin_without_descriptor(self) -> None:
        before = fd_count()
        agent = FakeAgent()
        agent.run(lambda c: c.send(wire.BEGIN, wire.Begin(1000, 1, "s").marshal(), txid=3))
        with self.assertRaises(handoff.Aborted) as cm:
            handoff.join(socket_path=agent.path, name="t", standby=True, standby_timeout=10, log=lambda s: None)
        agent.finish()
        self.assertIn("expected begin with one descriptor", str(cm.exception))
        self.assertEqual(fd_count(), before)

    def test_good_import_then_source_aborts(self) -> None:
        """A whole import, Ready, then Abort on the pair: everything closed."""
        before = fd_count()
        agent = FakeAgent()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        peers: list[socket.socket] = []

        def script(c: wire.Conn) -> None:
            end = begin(c)
            send_listener_and_conn(c, srv, peers)
            pc = wire.Conn(end)
            pc.settimeout(10)
            m = pc.recv()
            self.assertEqual(m.type, wire.READY)
            pc.send(wire.ABORT, wire.Failure(wire.CODE_DEADLINE, "late").marshal(), txid=7)
            pc.close()

        agent.run(script)
        p = handoff.join(socket_path=agent.path, name="t", standby=True, standby_timeout=10, log=lambda s: None)
        self.assertTrue(p.inherited)
        ln = p.listen("tcp", "x")
        with self.assertRaises(handoff.Aborted):
            p.ready()
        with self.assertRaises(OSError):
            ln.accept(timeout=0.1)
        p.close()
        agent.finish()
        for x in peers:
            x.close()
        srv.close()
        self.assertEqual(fd_count(), before)


class Source(unittest.TestCase):
    """A serving process whose agent sends bad input: it keeps serving."""

    def setUp(self) -> None:
        # These tests end the session on purpose: no rejoining during them
        # unless a test asks for it.
        self.saved = _process.REJOIN_FIRST
        _process.REJOIN_FIRST = 60

    def tearDown(self) -> None:
        _process.REJOIN_FIRST = self.saved

    def test_rejoin(self) -> None:
        """The session breaks; the process joins again (Hello with neither
        flag) and answers Prepares on the new session."""
        _process.REJOIN_FIRST = 0.05
        before = fd_count()
        agent = FakeAgent()
        second: list[wire.Hello] = []
        aborts: list[wire.Failure] = []

        def script(c: wire.Conn) -> None:
            raw(c, b"junk", [])  # fails the checks: the session is over
            s, _ = agent.ln.accept()
            c2 = wire.Conn(s)
            c2.settimeout(10)
            second.append(wire.Hello.unmarshal(c2.recv().body))
            c2.version = 2
            c2.send(wire.WELCOME, wire.Welcome(2, 0, os.getpid(), 2).marshal())
            c2.send(wire.PREPARE, b"bad", txid=5)
            m = c2.recv()
            aborts.append(wire.Failure.unmarshal(m.body))
            c2.close()

        agent.run(script)
        logs: list[str] = []
        p = handoff.join(socket_path=agent.path, name="r", log=logs.append)
        agent.thread.join(20)  # type: ignore[union-attr]
        p.close()
        agent.finish()
        self.assertEqual(second[0].flags, 0, "a process that serves joins again with neither flag")
        self.assertEqual(second[0].name, "r")
        self.assertEqual([f.code for f in aborts], [wire.CODE_MALFORMED])
        self.assertTrue(any("joined the agent again as session 2" in l for l in logs), logs)
        for _ in range(200):
            if fd_count() == before:
                break
            threading.Event().wait(0.01)  # polling interval of a bounded condition wait
        self.assertEqual(fd_count(), before)

    def test_bad_prepares_then_garbage(self) -> None:
        srv_before = fd_count()
        agent = FakeAgent()
        aborts: list[wire.Failure] = []
        served = threading.Event()

        def script(c: wire.Conn) -> None:
            # No descriptor, then two, then a body that does not decode, then
            # a Prepare whose descriptor is not a socket pair.
            c.send(wire.PREPARE, wire.Prepare(7, 1000, 2).marshal(), txid=1)
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            c.send(wire.PREPARE, wire.Prepare(7, 1000, 2).marshal(), [a.fileno(), b.fileno()], txid=2)
            c.send(wire.PREPARE, b"\0" * 3, [a.fileno()], txid=3)
            r, w = os.pipe()
            c.send(wire.PREPARE, wire.Prepare(7, 1000, 2).marshal(), [r], txid=4)
            os.close(r)
            os.close(w)
            a.close()
            b.close()
            for _ in range(4):
                aborts.append(wire.Failure.unmarshal(agent.recv(c).body))
            # An unknown type with descriptors: the session ends, the
            # descriptors are closed, the application serves on.
            x, y = socket.socketpair()
            raw(c, wire.encode_header(2, 99, 0, 0, 0, 1, 0), [x.fileno()])
            x.close()
            y.close()
            served.wait(10)

        agent.run(script)
        logs: list[str] = []
        p = handoff.join(socket_path=agent.path, name="s", log=logs.append)
        self.assertTrue(p.available)
        ln = p.listen("tcp", "127.0.0.1:0")
        ln.sock.settimeout(None)
        addr = ln.getsockname()
        cl = socket.create_connection(addr)
        s, _ = ln.accept()
        p.track(s, freeze=lambda: self.fail("frozen by a bad prepare") or b"", resume=lambda: None)
        for _ in range(200):
            if not p.available:
                break
            threading.Event().wait(0.05)  # polling interval of a bounded condition wait
        self.assertFalse(p.available, "the session should end after an unknown type")
        # Still serving: the tracked connection and the listener work.
        cl.sendall(b"ping")
        self.assertEqual(s.recv(4), b"ping")
        cl2 = socket.create_connection(addr)
        s2, _ = ln.accept()
        served.set()
        agent.finish()
        self.assertEqual([f.code for f in aborts], [wire.CODE_MALFORMED] * 4, [str(f) for f in aborts])
        self.assertTrue(any("lost the agent" in l for l in logs), logs)
        for x in (cl, cl2, s, s2):
            x.close()
        ln.close()
        p.close()
        self.assertEqual(fd_count(), srv_before, "descriptors leaked: " + " ".join(sorted(os.listdir("/proc/self/fd"))))


class Versions(unittest.TestCase):
    """Version negotiation (section 7)."""

    def test_hello(self) -> None:
        agent = FakeAgent()
        agent.run(lambda c: None)
        p = handoff.join(socket_path=agent.path, name="v", log=lambda s: None)
        agent.finish()
        self.assertEqual(agent.hello_header_version, 1, "Hello must carry header version 1")
        assert agent.hello is not None
        self.assertEqual((agent.hello.min_version, agent.hello.max_version, agent.hello.flags), (1, 2, wire.HELLO_ASK))
        p.close()

    def test_version_1_agent_ignores_welcome_standby(self) -> None:
        agent = FakeAgent(welcome_flags=wire.WELCOME_STANDBY, version=1)
        agent.run(lambda c: None)
        p = handoff.join(socket_path=agent.path, name="v", standby_timeout=60, log=lambda s: None)
        agent.finish()
        self.assertFalse(p.inherited)
        self.assertEqual(p._agent.version if p._agent else None, 1)
        p.close()

    def test_unknown_version_chosen(self) -> None:
        agent = FakeAgent(version=3)
        agent.run(lambda c: None)
        logs: list[str] = []
        p = handoff.join(socket_path=agent.path, name="v", log=logs.append)
        agent.finish()
        self.assertFalse(p.available)
        self.assertIn("protocol version 3", logs[0])

    def test_told_to_wait_then_nothing(self) -> None:
        """WelcomeStandby and no Begin: after the standby timeout the process
        joins again with neither flag and serves fresh sockets."""
        agent = FakeAgent(welcome_flags=wire.WELCOME_STANDBY)
        hellos: list[wire.Hello] = []

        def script(c: wire.Conn) -> None:
            s, _ = agent.ln.accept()
            c2 = wire.Conn(s)
            m = c2.recv()
            hellos.append(wire.Hello.unmarshal(m.body))
            c2.version = 2
            c2.send(wire.WELCOME, wire.Welcome(2, 0, os.getpid(), 2).marshal())
            c2.settimeout(10)
            try:
                c2.recv()  # until the process closes its session
            except (wire.WireError, OSError):
                pass
            c2.close()

        agent.run(script)
        logs: list[str] = []
        p = handoff.join(socket_path=agent.path, name="v", standby_timeout=0.2, log=logs.append)
        self.assertEqual(p.session_id, 2)
        self.assertFalse(p.inherited)
        p.close()
        agent.finish()
        self.assertEqual(hellos[0].flags, 0, "the second Hello must carry neither flag")
        self.assertTrue(any("no handoff arrived" in l for l in logs), logs)


class StandbyRejoin(unittest.TestCase):
    """A process waiting for a handoff loses the agent before Begin: it joins
    again with the flags of its first Hello and waits on (section 7, "Losing
    the agent, and joining again")."""

    def setUp(self) -> None:
        self.saved = _process.REJOIN_FIRST
        _process.REJOIN_FIRST = 0.05

    def tearDown(self) -> None:
        _process.REJOIN_FIRST = self.saved

    def wait_fds(self, want: int) -> None:
        """Wait (bounded) until this process holds want descriptors: the
        control thread closes its session after close() returns."""
        for _ in range(200):
            if fd_count() == want:
                break
            threading.Event().wait(0.01)  # polling interval of a bounded condition wait
        self.assertEqual(fd_count(), want, "descriptors leaked: " + " ".join(sorted(os.listdir("/proc/self/fd"))))

    def test_standby_rejoins_then_receives(self) -> None:
        """The first session ends before Begin; the process joins again in
        standby, and the handoff that then comes on the new session arrives
        whole: a listener and a connection with its state."""
        before = fd_count()
        agent = FakeAgent()
        hellos: list[wire.Hello] = []
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        peers: list[socket.socket] = []

        def script(c: wire.Conn) -> None:
            c.close()  # the agent goes away before anything began
            c2, h = agent.accept()
            hellos.append(h)
            end = begin(c2)
            send_listener_and_conn(c2, srv, peers)
            pc = wire.Conn(end)
            pc.settimeout(10)
            m = pc.recv()
            self.assertEqual(m.type, wire.READY)
            pc.send(wire.COMMIT, txid=7)
            pc.close()
            self.assertEqual(agent.recv(c2).type, wire.SERVING)
            c2.close()

        agent.run(script)
        logs: list[str] = []
        p = handoff.join(socket_path=agent.path, name="sb", standby=True, standby_timeout=20, log=logs.append)
        self.assertTrue(p.inherited)
        self.assertEqual(p.session_id, 2)
        ln = p.listen("tcp", "x")
        ics = p.ready()
        agent.finish()
        self.assertEqual(len(hellos), 1)
        self.assertEqual(hellos[0].flags, wire.HELLO_STANDBY, "the second Hello must carry the first one's flags")
        self.assertEqual(hellos[0].name, "sb")
        self.assertTrue(any("lost the agent while waiting for a handoff" in l for l in logs), logs)
        self.assertTrue(any("joined the agent again as session 2" in l for l in logs), logs)
        self.assertEqual([ic.state for ic in ics], [b"st"])
        peers[0].sendall(b"hi")
        ics[0].conn.settimeout(10)
        self.assertEqual(ics[0].conn.recv(2), b"hi", "the imported connection is the client's")
        for ic in ics:
            ic.conn.close()
        ln.close()
        p.close()
        for x in peers:
            x.close()
        srv.close()
        self.wait_fds(before)

    def test_told_to_wait_rejoins_then_serves_fresh(self) -> None:
        """Asked (HelloAsk) and told to wait (WelcomeStandby), or told of
        stored descriptors (WelcomePending); the session ends before Begin,
        the process joins again with HelloAsk, and the new Welcome has
        nothing for it: it serves fresh sockets on the new session."""
        for flag in (wire.WELCOME_STANDBY, wire.WELCOME_PENDING):
            with self.subTest(welcome=flag):
                before = fd_count()
                agent = FakeAgent(welcome_flags=flag)
                hellos: list[wire.Hello] = []
                aborts: list[wire.Failure] = []

                def script(c: wire.Conn) -> None:
                    c.close()
                    c2, h = agent.accept()
                    hellos.append(h)
                    # Serving on the new session: a bad Prepare is refused there.
                    c2.send(wire.PREPARE, b"bad", txid=5)
                    aborts.append(wire.Failure.unmarshal(agent.recv(c2).body))
                    c2.close()

                agent.run(script)
                logs: list[str] = []
                p = handoff.join(socket_path=agent.path, name="ask", standby_timeout=20, log=logs.append)
                self.assertFalse(p.inherited)
                self.assertEqual(p.session_id, 2)
                agent.thread.join(20)  # type: ignore[union-attr]
                p.close()
                agent.finish()
                self.assertEqual([h.flags for h in hellos], [wire.HELLO_ASK], "the second Hello must carry the first one's flags")
                self.assertEqual([f.code for f in aborts], [wire.CODE_MALFORMED])
                self.assertTrue(any("has no handoff for this process; serving with fresh sockets" in l for l in logs), logs)
                self.wait_fds(before)

    def test_standby_rejoin_waits_only_the_rest(self) -> None:
        """The rejoined process waits for what remains of its standby wait,
        not a new one: a first session that lasts most of the wait leaves
        little of it."""
        before = fd_count()
        agent = FakeAgent()
        hellos: list[wire.Hello] = []
        timeout, first = 3.0, 1.5

        def script(c: wire.Conn) -> None:
            # How long the first session lasts is the scenario, not a
            # synchronisation: the process waits in recv all along.
            threading.Event().wait(first)
            c.close()
            c2, h = agent.accept()
            hellos.append(h)
            c2.settimeout(20)
            try:
                c2.recv()  # until the process gives up and closes its session
            except (wire.WireError, OSError):
                pass
            c2.close()

        agent.run(script)
        start = time.monotonic()
        with self.assertRaises(handoff.StandbyTimeout):
            handoff.join(socket_path=agent.path, name="sb", standby=True, standby_timeout=timeout, log=lambda s: None)
        took = time.monotonic() - start
        agent.finish()
        self.assertEqual([h.flags for h in hellos], [wire.HELLO_STANDBY])
        self.assertGreaterEqual(took, timeout, "gave up before the standby wait ended")
        # A new wait after rejoining would end after first + timeout (4.5 s).
        self.assertLess(took, first + timeout - 0.5, "the rejoined process waited a whole standby timeout again")
        self.wait_fds(before)

    def test_lost_after_begin_aborts(self) -> None:
        """A process that had received Begin does not join again: the
        session's end aborts the import, and join raises Aborted."""
        before = fd_count()
        agent = FakeAgent()
        ends: list[socket.socket] = []

        def script(c: wire.Conn) -> None:
            ends.append(begin(c))
            c.close()

        agent.run(script)
        with self.assertRaises(handoff.Aborted) as cm:
            handoff.join(socket_path=agent.path, name="sb", standby=True, standby_timeout=20, log=lambda s: None)
        agent.thread.join(20)  # type: ignore[union-attr]
        self.assertIn("receive from agent", str(cm.exception))
        agent.ln.setblocking(False)
        with self.assertRaises(BlockingIOError, msg="the process joined again after Begin"):
            agent.ln.accept()
        end = wire.Conn(ends[0])
        end.settimeout(10)
        self.assertEqual(end.recv().type, wire.ABORT, "the source must hear the Abort on the pair")
        end.close()
        agent.finish()
        self.wait_fds(before)


class NoAgent(unittest.TestCase):
    def test_fallback(self) -> None:
        logs: list[str] = []
        p = handoff.join(socket_path="/nonexistent/agent.sock", name="x", log=logs.append)
        self.assertFalse(p.available)
        self.assertEqual(len(logs), 1, logs)
        self.assertIn("unavailable, serving with fresh sockets", logs[0])
        ln = p.listen("tcp", "127.0.0.1:0")
        self.assertEqual(p.ready(), [])
        ln.close()

    def test_standby_needs_agent(self) -> None:
        with self.assertRaises(handoff.HandoffError):
            handoff.join(socket_path="/nonexistent/agent.sock", standby=True, log=lambda s: None)


if __name__ == "__main__":
    unittest.main()
