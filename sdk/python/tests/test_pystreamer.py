"""examples/pystreamer against vectors produced by the Go streamer's own
code (examples/streamer/server): the state record, the error replies and
the stream bytes must be identical for Go and Python processes to hand
connections to each other."""

from __future__ import annotations

import hashlib
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "examples", "pystreamer"))

import pystreamer as ps  # noqa: E402

# appendState of examples/streamer/server for the same four states.
GOLDEN = [
    (dict(phase=2, name="demo", nxt=1638, due=1700000000000000000), "02020464656d6fe60c008080a8b1e39fe7cb17"),
    (dict(phase=2, name="load-7", nxt=123456789, unsent=b"abc"), "0202066c6f61642d37959aef3a0361626300"),
    (dict(phase=1, request=b"GET /str"), "020108474554202f737472"),
]


class StateRecord(unittest.TestCase):
    def test_golden(self) -> None:
        for kw, want in GOLDEN:
            b = ps.encode_state(**kw)
            self.assertEqual(b.hex(), want)
            st = ps.decode_state(b)
            self.assertEqual(st["phase"], kw["phase"])
        closing = ps.encode_state(3, unsent=ps.RESP_NOT_FOUND)
        self.assertEqual(closing[:3].hex(), "02037c")
        self.assertEqual(ps.decode_state(closing)["unsent"], ps.RESP_NOT_FOUND)

    def test_refused(self) -> None:
        good = bytes.fromhex(GOLDEN[0][1])
        for bad in (good[:1], b"\x03" + good[1:], good + b"\0", good[:-1], b"\x02\x09",
                    b"\x02\x02\x04demo\x80\x00\x00\x00",  # non-minimal varint
                    b"\x02\x02\x02a/\x00\x00\x00"):  # invalid name
            with self.assertRaises(ps.BadState, msg=bad.hex()):
                ps.decode_state(bad)
        v1 = b"\x01\x02\x04demo\x05\x00"
        self.assertEqual(ps.decode_state(v1)["due"], 0)


class HTTP(unittest.TestCase):
    def test_requests(self) -> None:
        ok = b"GET /streams/a.b~c-9_ HTTP/1.1\r\nHost: x\r\n\r\n"
        self.assertEqual(ps.parse_request(ok), ("a.b~c-9_", None))
        self.assertEqual(ps.parse_request(b"\r\n" + ok)[0], "a.b~c-9_")
        self.assertEqual(ps.parse_request(b"GET /streams/x HTTP/1.0\r\n\r\n")[0], "x")
        self.assertEqual(ps.parse_request(b"POST /streams/x HTTP/1.1\r\n\r\n")[1], ps.RESP_BAD_METHOD)
        self.assertEqual(ps.parse_request(b"GET /x HTTP/1.1\r\n\r\n")[1], ps.RESP_NOT_FOUND)
        self.assertEqual(ps.parse_request(b"GET /streams/" + b"a" * 129 + b" HTTP/1.1\r\n\r\n")[1], ps.RESP_NOT_FOUND)
        self.assertEqual(ps.parse_request(b"GET /streams/x HTTP/2\r\n\r\n")[1], ps.RESP_BAD_REQUEST)
        self.assertEqual(ps.parse_request(b"GET /streams/x HTTP/1.1\r\nbad\r\n\r\n")[1], ps.RESP_BAD_REQUEST)
        self.assertEqual(ps.parse_request(b"POST /streams/x HTTP/1.1\r\n:v\r\n\r\n")[1], ps.RESP_BAD_REQUEST)

    def test_bytes(self) -> None:
        want = hashlib.sha256(b"demo:0").digest() + hashlib.sha256(b"demo:1").digest()
        self.assertEqual(ps.fill("demo", 0, 64), want)
        self.assertEqual(ps.fill("demo", 5, 40), want[5:45])
        self.assertEqual(len(ps.OK_HEADER), 78)


if __name__ == "__main__":
    unittest.main()
