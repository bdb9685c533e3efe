"""asyncio integration: serve movable connections from coroutines.

A :class:`Stream` is a connection read and written by one asyncio task. Its
I/O goes through the stream's own buffers, so at any ``await`` the stream
knows exactly which bytes were received but not yet consumed and which were
accepted by :meth:`Stream.write` but not yet sent. A migration freezes it
on the event loop's thread, between two steps of the application's
coroutines: a safe point by construction. The state record that travels is
an envelope of three parts: the application's own state (from the
``state`` callable given to :func:`serve` or set on the stream), the unread
bytes and the unsent bytes. In the new process :func:`adopt` rebuilds the
stream with the unread bytes in front of what the socket delivers and the
unsent bytes queued first, and hands the application its state back.

A server::

    import asyncio, handoff, handoff.aio as hio

    async def handle(stream: hio.Stream, state: bytes | None) -> None:
        counter = int(state or b"0")
        stream.state = lambda: str(counter).encode()   # read at a freeze
        try:
            while line := await stream.readline():
                counter += 1
                stream.write(b"%d %s" % (counter, line))
                await stream.drain()
        except handoff.Moved:
            return                 # the connection lives on in the new process
        stream.close()

    async def main() -> None:
        p = await hio.join()                   # handoff.join, off the loop
        ln = p.listen("tcp", "127.0.0.1:8080")
        for ic in await hio.ready(p):          # connections handed over
            hio.adopt(p, ic, handle)
        server = hio.serve(p, ln, handle)
        await hio.wait_done(p)                 # sockets moved: exit
        server.close()

    asyncio.run(main())

The SDK calls the freeze, resume and moved hooks from its own thread; this
module runs them on the loop with ``call_soon_threadsafe`` and waits, so the
loop must not be blocked (do not call :meth:`handoff.Process.ready` on it:
use :func:`ready`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import socket
import struct
import threading
from typing import Awaitable, Callable, Optional

from . import _process
from .errors import HandoffError, Moved, Skip

Handler = Callable[["Stream", Optional[bytes]], Awaitable[None]]

FREEZE_WAIT = 30.0
"""Seconds a freeze waits for the event loop before it fails the migration."""

_ENVELOPE = b"HOA1"


def encode_envelope(app: bytes, unread: bytes, unsent: bytes) -> bytes:
    """The state record of an asyncio stream: ``HOA1``, then three u32
    lengths (little-endian) and the application state, unread and unsent bytes."""
    return _ENVELOPE + struct.pack("<III", len(app), len(unread), len(unsent)) + app + unread + unsent


def decode_envelope(b: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a state record made by :func:`encode_envelope`."""
    if len(b) < 16 or b[:4] != _ENVELOPE:
        raise HandoffError("asyncio stream state: not an HOA1 envelope")
    a, r, s = struct.unpack_from("<III", b, 4)
    if 16 + a + r + s != len(b):
        raise HandoffError(f"asyncio stream state: lengths {a}+{r}+{s} do not match {len(b) - 16} bytes")
    o = 16
    return b[o:o + a], b[o + a:o + a + r], b[o + a + r:]


async def join(**kw: object) -> _process.Process:
    """:func:`handoff.join` on a worker thread (it may wait for a handoff)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(_process.join, **kw))  # type: ignore[arg-type]


async def ready(p: _process.Process) -> list[_process.Imported]:
    """:meth:`handoff.Process.ready` on a worker thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, p.ready)


async def wait_done(p: _process.Process) -> None:
    """Wait until this process's sockets were handed to another process.
    (A daemon thread waits for the SDK's event, so a loop that ends for
    another reason does not wait for it at shutdown.)"""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not fut.done():
            fut.set_result(None)

    threading.Thread(target=lambda: (p.done.wait(), loop.call_soon_threadsafe(done)), daemon=True).start()
    await fut


def _on_loop(loop: asyncio.AbstractEventLoop, f: Callable[[], object]) -> object:
    """Run f on the loop's thread and return its result (from another thread)."""
    fut: concurrent.futures.Future[object] = concurrent.futures.Future()

    def call() -> None:
        try:
            fut.set_result(f())
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            fut.set_exception(e)

    loop.call_soon_threadsafe(call)
    return fut.result(FREEZE_WAIT)


class Stream:
    """A movable connection for one asyncio task: buffered reads and writes
    whose unread and unsent bytes travel with the connection."""

    def __init__(self, p: _process.Process, sock: socket.socket, unread: bytes = b"", unsent: bytes = b"") -> None:
        self._p = p
        self.sock = sock
        sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._rbuf = bytearray(unread)
        self._wbuf = bytearray(unsent)
        self._eof = False
        self._err: Optional[BaseException] = None
        self._frozen = False
        self._moved = False
        self._closed = False
        self._rwait: Optional[asyncio.Future[None]] = None
        self._wwait: Optional[asyncio.Future[None]] = None
        self._reading = False
        self._writing = False
        self.state: Optional[Callable[[], bytes]] = None
        """Returns the application's state record at a freeze (on the loop)."""
        self._group = _Group.of(p, self._loop)
        self._group.streams.add(self)
        self.tracked = p.track(sock, freeze=self._freeze, resume=self._resume, moved=self._moved_hook)
        if self._wbuf:
            self._want_write()

    # Reading.

    def _want_read(self) -> None:
        if not self._reading and not self._frozen and not self._closed:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        try:
            b = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._err = e
            b = b""
        if b:
            self._rbuf += b
        else:
            self._eof = True
        self._stop_reading()
        self._wake_reader()

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _wake_reader(self) -> None:
        w, self._rwait = self._rwait, None
        if w is not None and not w.done():
            w.set_result(None)

    async def _fill(self) -> None:
        if self._moved:
            raise Moved("the connection now belongs to another process")
        if self._eof or self._err:
            return
        self._rwait = self._loop.create_future()
        self._want_read()
        await self._rwait
        if self._moved:
            raise Moved("the connection now belongs to another process")

    async def read(self, n: int = 65536) -> bytes:
        """Up to n bytes; b"" at end of stream."""
        while not self._rbuf:
            if self._eof or self._err:
                if self._err:
                    raise self._err
                return b""
            await self._fill()
        b = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return b

    async def readline(self) -> bytes:
        """Bytes up to and including the next newline (less at end of stream)."""
        while True:
            i = self._rbuf.find(b"\n")
            if i >= 0:
                b = bytes(self._rbuf[:i + 1])
                del self._rbuf[:i + 1]
                return b
            if self._eof or self._err:
                if self._err:
                    raise self._err
                b = bytes(self._rbuf)
                self._rbuf.clear()
                return b
            await self._fill()

    # Writing.

    def write(self, data: bytes) -> None:
        """Queue data; it is sent as the socket accepts it (also while frozen:
        then it waits, and goes with the state if the connection moves)."""
        if self._closed:
            raise OSError(9, "write on a closed stream")
        self._wbuf += data
        self._want_write()

    def _want_write(self) -> None:
        if self._wbuf and not self._writing and not self._frozen and not self._closed:
            self._loop.add_writer(self.sock.fileno(), self._on_writable)
            self._writing = True

    def _on_writable(self) -> None:
        try:
            n = self.sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._err = e
            self._wbuf.clear()
            n = 0
        del self._wbuf[:n]
        if not self._wbuf:
            self._stop_writing()
            w, self._wwait = self._wwait, None
            if w is not None and not w.done():
                w.set_result(None)

    def _stop_writing(self) -> None:
        if self._writing:
            self._loop.remove_writer(self.sock.fileno())
            self._writing = False

    async def drain(self) -> None:
        """Wait until everything written was sent (raises Moved if the
        connection moved meanwhile)."""
        while self._wbuf:
            if self._moved:
                raise Moved("the connection now belongs to another process")
            if self._err:
                raise self._err
            if self._wwait is None or self._wwait.done():
                self._wwait = self._loop.create_future()
            self._want_write()
            await self._wwait
        if self._moved:
            raise Moved("the connection now belongs to another process")

    def close(self) -> None:
        """Stop tracking and close the connection (a no-op once it moved)."""
        if self._closed or self._moved:
            return
        self._closed = True
        self._stop_reading()
        self._stop_writing()
        self._group.streams.discard(self)
        self.tracked.untrack()
        self.sock.close()

    # Hooks, called from the SDK's thread. A freeze runs on the loop, for
    # every stream of the loop at once (see _Group); resume and moved are
    # handed to the loop.

    def _freeze_now(self) -> list[bytes]:
        """Freeze on the loop's thread and return the state record's buffers."""
        self._frozen = True
        self._stop_reading()
        self._stop_writing()
        app = self.state() if self.state is not None else b""
        # The application's state goes as it is, not copied into the
        # envelope: a large one then costs no copy in this process.
        unread, unsent = bytes(self._rbuf), bytes(self._wbuf)
        head = _ENVELOPE + struct.pack("<III", len(app), len(unread), len(unsent))
        return [head, app, unread, unsent]

    def _resume_now(self) -> None:
        self._frozen = False
        if self._rwait is not None:
            self._want_read()
        self._want_write()

    def _freeze(self) -> list[bytes]:
        return self._group.freeze(self)

    def _resume(self) -> None:
        self._group.settle()
        self._loop.call_soon_threadsafe(self._resume_now)

    def _moved_hook(self) -> None:
        self._group.settle()

        def on_loop() -> None:
            self._moved = True
            self._wake_reader()
            w, self._wwait = self._wwait, None
            if w is not None and not w.done():
                w.set_result(None)
        _on_loop(self._loop, on_loop)


class _Group:
    """The streams of one process on one loop. The first freeze hook of a
    migration freezes all of them in one call on the loop and keeps their
    states; the hooks of the others then return at once. A round trip to
    the loop per connection cost about 200 microseconds each, 200 ms of
    pause for 1000 connections; one for all costs one. A stream frozen in
    bulk whose hook was never called (the migration was decided first) is
    resumed at the decision."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.streams: set[Stream] = set()  # touched on the loop only
        self.lock = threading.Lock()
        self.cache: dict[Stream, list[bytes]] = {}

    @staticmethod
    def of(p: _process.Process, loop: asyncio.AbstractEventLoop) -> "_Group":
        groups: dict[asyncio.AbstractEventLoop, _Group] = p.__dict__.setdefault("_aio_groups", {})
        g = groups.get(loop)
        if g is None:
            g = groups[loop] = _Group(loop)
        return g

    def freeze(self, s: Stream) -> list[bytes]:
        with self.lock:
            st = self.cache.pop(s, None)
        if st is not None:
            return st

        def on_loop() -> dict[Stream, list[bytes]]:
            out = {}
            for x in list(self.streams):
                if not x._frozen and not x._closed and not x._moved:
                    out[x] = x._freeze_now()
            return out
        states: dict[Stream, list[bytes]] = _on_loop(self.loop, on_loop)  # type: ignore[assignment]
        with self.lock:
            mine = states.pop(s, None)
            self.cache.update(states)
        if mine is None:
            raise Skip()  # closed, or frozen by an earlier call
        return mine

    def settle(self) -> None:
        """Resume the streams frozen in bulk whose hooks were not called."""
        with self.lock:
            left = list(self.cache)
            self.cache.clear()
        for x in left:
            self.loop.call_soon_threadsafe(x._resume_now)


class Server:
    """Accepts connections from a :class:`handoff.Listener` on the loop and
    runs the handler for each (what :func:`serve` returns)."""

    def __init__(self, p: _process.Process, ln: _process.Listener, handler: Handler) -> None:
        self._p = p
        self._ln = ln
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._watching = False
        self._closed = False
        self.tasks: set[asyncio.Task[None]] = set()
        ln.sock.setblocking(False)
        ln.watch(lambda: self._loop.call_soon_threadsafe(self._update))
        self._update()

    def _update(self) -> None:
        want = not self._ln.paused and not self._closed
        if want and not self._watching:
            self._loop.add_reader(self._ln.fileno(), self._on_accept)
            self._watching = True
        elif not want and self._watching:
            try:
                self._loop.remove_reader(self._ln.fileno())
            except (ValueError, OSError):
                pass
            self._watching = False

    def _on_accept(self) -> None:
        for _ in range(64):
            try:
                sock, _ = self._ln.accept()
            except (BlockingIOError, InterruptedError, Moved):
                self._update()
                return
            except OSError:
                self._update()
                return
            start(self._p, sock, self._handler, None, server=self)

    def close(self) -> None:
        """Stop accepting (the listener itself is left to its owner)."""
        self._closed = True
        self._update()


def start(p: _process.Process, sock: socket.socket, handler: Handler, state: Optional[bytes],
          unread: bytes = b"", unsent: bytes = b"", server: Optional[Server] = None) -> "asyncio.Task[None]":
    """Track sock as a :class:`Stream` and run handler(stream, state) in a task."""
    s = Stream(p, sock, unread, unsent)
    task = asyncio.get_running_loop().create_task(handler(s, state))
    if server is not None:
        server.tasks.add(task)
        task.add_done_callback(server.tasks.discard)
    return task


def adopt(p: _process.Process, ic: _process.Imported, handler: Handler) -> "asyncio.Task[None]":
    """Resume a connection handed over by an asyncio process: its stream gets
    the unread and unsent bytes back, its handler the application state."""
    app, unread, unsent = decode_envelope(ic.state)
    return start(p, ic.conn, handler, app, unread, unsent)


def serve(p: _process.Process, ln: _process.Listener, handler: Handler) -> Server:
    """Accept on ln and run handler(stream, None) for each new connection."""
    return Server(p, ln, handler)
