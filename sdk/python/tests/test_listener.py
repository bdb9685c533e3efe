"""Listener and PacketSocket gating without an agent: a freeze interrupts
every thread blocked on the socket, and they carry on after the thaw."""

from __future__ import annotations

import socket
import threading
import unittest

import handoff


class Gate(unittest.TestCase):
    def test_freeze_wakes_every_waiter(self) -> None:
        p = handoff.join(socket_path="/nonexistent/agent.sock", log=lambda s: None)
        ln = p.listen("tcp", "127.0.0.1:0")
        got: list[socket.socket] = []
        lock = threading.Lock()

        def accept() -> None:
            c, _ = ln.accept()
            with lock:
                got.append(c)

        ts = [threading.Thread(target=accept, daemon=True) for _ in range(3)]
        for t in ts:
            t.start()
        done = threading.Event()
        threading.Thread(target=lambda: (ln._freeze(), done.set()), daemon=True).start()
        self.assertTrue(done.wait(10), "the freeze waited for a thread blocked in accept")
        clients = [socket.create_connection(ln.getsockname()) for _ in range(3)]
        ln._thaw()
        for t in ts:
            t.join(10)
        self.assertEqual(len(got), 3)
        for c in got + clients:
            c.close()
        ln.close()
        with self.assertRaises(OSError):
            ln.accept(timeout=0.1)

    def test_packet_socket(self) -> None:
        p = handoff.join(socket_path="/nonexistent/agent.sock", log=lambda s: None)
        pc = p.listen_packet("udp", "127.0.0.1:0")
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.sendto(b"hi", pc.getsockname())
        data, peer = pc.recvfrom(100, timeout=10)
        self.assertEqual(data, b"hi")
        pc.sendto(b"ho", peer)
        self.assertEqual(c.recv(10), b"ho")
        with self.assertRaises(TimeoutError):
            pc.recvfrom(100, timeout=0.05)
        with self.assertRaises(handoff.NotSupported):
            pc.accept()
        c.close()
        pc.close()


if __name__ == "__main__":
    unittest.main()
