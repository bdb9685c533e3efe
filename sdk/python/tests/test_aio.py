"""handoff.aio without an agent: the freeze of one stream freezes all of
its loop's streams at once, the ones whose hooks were not called are
resumed at the decision, and moved streams end their handlers with Moved."""

from __future__ import annotations

import asyncio
import socket
import unittest

import handoff
import handoff.aio as hio


class Streams(unittest.TestCase):
    def run_case(self, decide: str) -> list[str]:
        outcomes: list[str] = []

        async def handle(stream: hio.Stream, state: bytes | None) -> None:
            stream.state = lambda: b"app"
            try:
                while line := await stream.readline():
                    stream.write(b"echo " + line)
                    await stream.drain()
                outcomes.append("eof")
            except handoff.Moved:
                outcomes.append("moved")
                return
            stream.close()

        async def main() -> None:
            p = handoff.join(socket_path="/nonexistent/agent.sock", log=lambda s: None)
            ln = socket.socket()
            ln.bind(("127.0.0.1", 0))
            ln.listen()
            clients = []
            for _ in range(3):
                c = socket.create_connection(ln.getsockname())
                s, _ = ln.accept()
                clients.append(c)
                hio.start(p, s, handle, None)
            await asyncio.sleep(0)
            ts = list(p._tracked.values())
            loop = asyncio.get_running_loop()
            # The SDK calls the first hook only, then decides.
            state = await loop.run_in_executor(None, ts[0].freeze)
            self.assertEqual(hio.decode_envelope(b"".join(state)), (b"app", b"", b""))
            for c in clients:
                c.setblocking(False)
                c.send(b"ping\n")
            await asyncio.sleep(0.05)
            for c in clients:  # frozen: nothing answered
                with self.assertRaises(BlockingIOError):
                    c.recv(100)
            if decide == "resume":
                await loop.run_in_executor(None, ts[0].resume)
                for c in clients:
                    c.setblocking(True)
                    c.settimeout(10)
                    # Off the loop: the loop must run to answer.
                    self.assertEqual(await loop.run_in_executor(None, c.recv, 100), b"echo ping\n")
                    c.close()
            else:
                for t in ts[1:]:
                    await loop.run_in_executor(None, t.freeze)
                for t in ts:
                    await loop.run_in_executor(None, t.moved)
                for c in clients:
                    c.close()
            for _ in range(100):
                if len(outcomes) == 3:
                    break
                await asyncio.sleep(0.01)
            ln.close()

        asyncio.run(main())
        return outcomes

    def test_resume_all(self) -> None:
        self.assertEqual(self.run_case("resume"), ["eof"] * 3)

    def test_moved(self) -> None:
        self.assertEqual(self.run_case("moved"), ["moved"] * 3)


if __name__ == "__main__":
    unittest.main()
