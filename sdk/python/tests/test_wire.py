"""Unit tests of handoff.wire: framing, bodies, batches, memfds, and that
every error path closes the descriptors that arrived."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import unittest

from handoff import wire


def fd_count() -> int:
    """Descriptors open in this process."""
    return len(os.listdir("/proc/self/fd"))


def pair() -> tuple[wire.Conn, wire.Conn]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    return wire.Conn(a), wire.Conn(b)


def raw_send(c: wire.Conn, data: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    c.sock.sendmsg([data], anc)


class WorkedExample(unittest.TestCase):
    """Section 14 of docs/protocol.md, byte for byte."""

    HELLO = bytes.fromhex(
        "484f4646010100000000000000000000"
        "00000000000000001200000000000000"
        "0100010001000000080073747265616d"
        "6572"
    )

    def test_hello(self) -> None:
        body = wire.Hello(1, 1, wire.ROLE_APP, 0, "streamer").marshal()
        self.assertEqual(wire.encode_header(1, wire.HELLO, 0, 0, 0, 0, len(body)) + body, self.HELLO)
        m = wire.decode(self.HELLO, [])
        self.assertEqual(wire.Hello.unmarshal(m.body), wire.Hello(1, 1, 1, 0, "streamer"))

    def test_welcome(self) -> None:
        w = wire.Welcome.unmarshal(bytes.fromhex("01000000921000000300000000000000"))
        self.assertEqual(w, wire.Welcome(version=1, flags=0, pid=4242, session_id=3))


class Decode(unittest.TestCase):
    """The receiver's checks, in the order of section 3, each closing the
    descriptors that came with the datagram."""

    def check(self, data: bytes, nfds: int, exc: type[wire.WireError]) -> None:
        before = fd_count()
        fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(nfds)]
        with self.assertRaises(exc):
            wire.decode(data, fds)
        self.assertEqual(fd_count(), before, "a descriptor leaked on the error path")

    def hdr(self, **kw: int) -> bytes:
        f = dict(version=1, typ=wire.ABORT, flags=0, txid=0, seq=0, nfds=0, body_len=0)
        f.update(kw)
        return wire.encode_header(f["version"], f["typ"], f["flags"], f["txid"], f["seq"], f["nfds"], f["body_len"])

    def test_checks(self) -> None:
        self.check(b"HOFF", 1, wire.ShortError)
        self.check(b"XOFF" + self.hdr()[4:], 1, wire.MagicError)
        self.check(self.hdr(version=3), 1, wire.VersionError)
        self.check(self.hdr(version=0), 1, wire.VersionError)
        self.check(self.hdr(typ=14), 1, wire.TypeError_)
        self.check(self.hdr(body_len=wire.MAX_BODY + 1), 1, wire.TooLargeError)
        self.check(self.hdr(body_len=5) + b"abc", 1, wire.BodyLenError)
        self.check(self.hdr(nfds=2), 1, wire.FDCountError)

    def test_bodies_exact(self) -> None:
        f = wire.Failure(wire.CODE_IMPORT, "x" * 5000)
        got = wire.Failure.unmarshal(f.marshal())
        self.assertEqual(len(got.reason), wire.MAX_REASON)
        with self.assertRaises(wire.MalformedError):
            wire.Summary.unmarshal(wire.Summary().marshal() + b"\0")
        with self.assertRaises(wire.MalformedError):
            wire.Begin.unmarshal(wire.Begin(1, 2, "abc").marshal()[:-1])
        self.assertEqual(wire.Prepare.unmarshal(wire.Prepare(7, 100, 3).marshal()), wire.Prepare(7, 100, 3))


class Batches(unittest.TestCase):
    def test_inline(self) -> None:
        es = [wire.Entry(wire.KIND_LISTENER, "tcp|127.0.0.1:80"), wire.Entry(wire.KIND_CONN, "tcp", b"state")]
        body, flags, states = wire.marshal_batch(es)
        self.assertEqual(flags, 0)
        self.assertEqual(len(body), wire.inline_size(es))
        bi = wire.decode_batch(body, 2)
        self.assertEqual([(e.kind, e.key, e.state) for e in bi.entries], [(1, "tcp|127.0.0.1:80", b""), (2, "tcp", b"state")])
        with self.assertRaises(wire.FDCountError):
            wire.decode_batch(body, 3)

    def test_memfd(self) -> None:
        es = [wire.Entry(wire.KIND_CONN, "tcp", bytes([i]) * (40000 + i)) for i in range(3)]
        body, flags, states = wire.marshal_batch(es)
        self.assertEqual(flags, wire.BATCH_MEMFD)
        bi = wire.decode_batch(body, 4)
        self.assertTrue(bi.memfd)
        fd = wire.new_state_memfd(states)
        try:
            os.lseek(fd, 17, os.SEEK_SET)  # a shared offset must not matter: pread
            wire.split_states(bi, wire.read_state_memfd(fd, bi.state_sum))
            with self.assertRaises(wire.MalformedError):
                wire.read_state_memfd(fd, bi.state_sum + 1)
        finally:
            os.close(fd)
        self.assertEqual([e.state for e in bi.entries], [e.state for e in es])

    def test_buffer_lists(self) -> None:
        """A state given as a list of buffers travels as their concatenation,
        inline and in a memfd (more buffers than one pwritev takes)."""
        small = [b"ab", bytearray(b"cd"), memoryview(b"ef")]
        body, flags, _ = wire.marshal_batch([wire.Entry(wire.KIND_CONN, "tcp", small)])
        self.assertEqual(flags, 0)
        self.assertEqual(wire.decode_batch(body, 1).entries[0].state, b"abcdef")
        big = [bytes([i % 256]) * 50 for i in range(3000)]
        es = [wire.Entry(wire.KIND_CONN, "tcp", big), wire.Entry(wire.KIND_CONN, "unix", b""), wire.Entry(wire.KIND_CONN, "tcp", [b"z" * 70000])]
        body, flags, states = wire.marshal_batch(es)
        self.assertEqual(flags, wire.BATCH_MEMFD)
        fd = wire.new_state_memfd(states)
        try:
            bi = wire.decode_batch(body, 4)
            wire.read_states(fd, bi)
        finally:
            os.close(fd)
        self.assertEqual([e.state for e in bi.entries], [b"".join(big), b"", b"z" * 70000])

    def test_unsealed_memfd_refused(self) -> None:
        fd = os.memfd_create("x", os.MFD_CLOEXEC)
        try:
            os.write(fd, b"abc")
            with self.assertRaises(wire.MalformedError):
                wire.read_state_memfd(fd, 3)
        finally:
            os.close(fd)

    def test_long_keys_do_not_overflow(self) -> None:
        es = [wire.Entry(wire.KIND_LISTENER, "tcp|" + "x" * 1000) for _ in range(70)]
        with self.assertRaises(wire.TooLargeError):
            wire.marshal_batch(es)

    def test_bad_bodies(self) -> None:
        with self.assertRaises(wire.MalformedError):
            wire.decode_batch(struct.pack("<HHI", 0, 0, 0), 0)
        with self.assertRaises(wire.MalformedError):
            wire.decode_batch(struct.pack("<HHI", 1, 2, 0), 1)
        with self.assertRaises(wire.MalformedError):
            wire.decode_batch(struct.pack("<HHIBBHI", 1, 0, 0, 9, 0, 0, 0), 1)
        with self.assertRaises(wire.TooLargeError):
            wire.decode_batch(struct.pack("<HHIBBHI", 1, 0, 0, 2, 0, 2000, 0), 1)
        with self.assertRaises(wire.MalformedError):
            wire.decode_batch(struct.pack("<HHIBBHI", 1, 0, 0, 2, 0, 3, 4) + b"tcpab", 1)


class ConnTest(unittest.TestCase):
    def test_fds_travel(self) -> None:
        a, b = pair()
        r, w = os.pipe()
        try:
            a.send(wire.BEGIN, wire.Begin(5, 1, "s").marshal(), [r], txid=9)
            m = b.recv()
            self.assertEqual((m.type, m.txid, len(m.fds)), (wire.BEGIN, 9, 1))
            self.assertTrue(fcntl.fcntl(m.fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC, "received descriptor not close-on-exec")
            m.close_fds()
        finally:
            for x in (r, w):
                os.close(x)
            a.close()
            b.close()

    def test_receive_errors_close_fds(self) -> None:
        a, b = pair()
        try:
            before = fd_count()
            r, w = os.pipe()
            # Oversized: more than MaxMessage bytes.
            raw_send(a, b"\0" * (wire.MAX_MESSAGE + 10), [r, w])
            with self.assertRaises(wire.TruncatedError):
                b.recv()
            # Wrong count: the header says 2, one arrives.
            raw_send(a, wire.encode_header(1, wire.BATCH, 0, 1, 0, 2, 0), [r])
            with self.assertRaises(wire.FDCountError):
                b.recv()
            # Truncated header.
            raw_send(a, b"HOFF\x01", [w])
            with self.assertRaises(wire.ShortError):
                b.recv()
            os.close(r)
            os.close(w)
            self.assertEqual(fd_count(), before, "a received descriptor leaked")
            a.close()
            with self.assertRaises(wire.ClosedError):
                b.recv()
        finally:
            a.close()
            b.close()

    def test_send_limits(self) -> None:
        a, b = pair()
        try:
            with self.assertRaises(wire.TooLargeError):
                a.send(wire.BATCH, b"\0" * (wire.MAX_BODY + 1))
        finally:
            a.close()
            b.close()


if __name__ == "__main__":
    unittest.main()
