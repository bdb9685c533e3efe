"""The handoff wire protocol: framing, message bodies, descriptor passing and
state memfds, as specified in docs/protocol.md (versions 1 and 2).

This module mirrors the Go package ``wire``. A :class:`Conn` sends and
receives whole messages on a ``SOCK_SEQPACKET`` unix socket. Descriptors
that arrive with a message belong to the caller; descriptors that arrive
with a message that fails a check are closed before the error is raised, so
no error path leaks a descriptor.

A later protocol version is an addition here: raise :data:`MAX_VERSION`,
add its types to :data:`KNOWN_TYPES` and its bodies below.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

MAGIC = b"HOFF"
HEADER_LEN = 32
MAX_BODY = 64 << 10
MAX_MESSAGE = HEADER_LEN + MAX_BODY
MAX_FDS = 253
MAX_KEY = 1024
MAX_STATE = 64 << 20
MAX_REASON = 4096
MIN_VERSION = 1
MAX_VERSION = 2

# Message types (section 4).
HELLO = 1
WELCOME = 2
ERROR = 3
PREPARE = 4
BATCH = 5
EXPORTED = 6
BEGIN = 7
END = 8
ABORT = 9
READY = 10
COMMIT = 11
COMMITTED = 12
SERVING = 13
REQUEST = 20
RESPONSE = 21
PROGRESS = 22

KNOWN_TYPES = frozenset(
    {HELLO, WELCOME, ERROR, PREPARE, BATCH, EXPORTED, BEGIN, END, ABORT, READY, COMMIT, COMMITTED, SERVING, REQUEST, RESPONSE, PROGRESS}
)

TYPE_NAMES = {
    HELLO: "Hello", WELCOME: "Welcome", ERROR: "Error", PREPARE: "Prepare", BATCH: "Batch",
    EXPORTED: "Exported", BEGIN: "Begin", END: "End", ABORT: "Abort", READY: "Ready",
    COMMIT: "Commit", COMMITTED: "Committed", SERVING: "Serving", REQUEST: "Request",
    RESPONSE: "Response", PROGRESS: "Progress",
}

ROLE_APP = 1
ROLE_ADMIN = 2

HELLO_STANDBY = 1
HELLO_ASK = 2
WELCOME_PENDING = 1
WELCOME_STANDBY = 2

MOVE_LISTENERS = 1
MOVE_CONNS = 2
MOVE_PACKETS = 4
MOVE_ALL = 7

KIND_LISTENER = 1
KIND_CONN = 2
KIND_PACKET = 3

BATCH_MEMFD = 1

# Failure codes (section 6).
CODE_VERSION = 1
CODE_MALFORMED = 2
CODE_REFUSED = 3
CODE_BUSY = 4
CODE_INTERNAL = 5
CODE_NOT_FOUND = 6
CODE_DEADLINE = 7
CODE_SOURCE_LOST = 8
CODE_TARGET_LOST = 9
CODE_IMPORT = 10
CODE_EXPORT = 11
CODE_CANCELLED = 12
CODE_UNEXPECTED = 13
CODE_AGENT_CLOSED = 14
CODE_NOT_CLAIMED = 15

CODE_NAMES = {
    CODE_VERSION: "Version", CODE_MALFORMED: "Malformed", CODE_REFUSED: "Refused", CODE_BUSY: "Busy",
    CODE_INTERNAL: "Internal", CODE_NOT_FOUND: "NotFound", CODE_DEADLINE: "DeadlineExceeded",
    CODE_SOURCE_LOST: "SourceLost", CODE_TARGET_LOST: "TargetLost", CODE_IMPORT: "ImportFailed",
    CODE_EXPORT: "ExportFailed", CODE_CANCELLED: "Cancelled", CODE_UNEXPECTED: "UnexpectedMessage",
    CODE_AGENT_CLOSED: "AgentClosed", CODE_NOT_CLAIMED: "NotClaimed",
}


def code_name(code: int) -> str:
    """The name of a failure code, ``Code<n>`` for unknown ones."""
    return CODE_NAMES.get(code, f"Code{code}")


def type_name(typ: int) -> str:
    """The name of a message type, ``Type(<n>)`` for unknown ones."""
    return TYPE_NAMES.get(typ, f"Type({typ})")


class WireError(Exception):
    """A message could not be sent or received as the protocol requires."""


class ShortError(WireError):
    """The datagram is shorter than the header."""


class MagicError(WireError):
    """The datagram does not start with ``HOFF``."""


class VersionError(WireError):
    """The header carries a protocol version this side does not speak."""


class TypeError_(WireError):
    """The header names an unknown message type."""


class TooLargeError(WireError):
    """A body, key, state or descriptor count exceeds the protocol's limit."""


class BodyLenError(WireError):
    """The header's body length does not match the datagram."""


class FDCountError(WireError):
    """The number of descriptors does not match the header or the batch."""


class TruncatedError(WireError):
    """The kernel truncated the datagram or its control data (MSG_TRUNC,
    MSG_CTRUNC: for instance the receiver ran out of descriptors)."""


class MalformedError(WireError):
    """A body does not decode, or control data is not SCM_RIGHTS."""


class ClosedError(WireError):
    """The peer closed the connection."""


_HDR = struct.Struct("<4sBBHQIHHII")
assert _HDR.size == HEADER_LEN
_ANC = socket.CMSG_SPACE(MAX_FDS * 4) + socket.CMSG_SPACE(64)


def monotonic_ns() -> int:
    """``CLOCK_MONOTONIC`` in nanoseconds, the clock every stamp uses."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def close_all(fds: Iterable[int]) -> None:
    """Close every descriptor in fds, ignoring errors (negative ones are skipped)."""
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class Msg:
    """One message: header fields, body and the descriptors that came with it."""

    type: int
    body: bytes = b""
    fds: list[int] = field(default_factory=list)
    txid: int = 0
    seq: int = 0
    flags: int = 0
    version: int = MIN_VERSION

    def close_fds(self) -> None:
        """Close the message's descriptors (each at most once)."""
        fds, self.fds = self.fds, []
        close_all(fds)


def encode_header(version: int, typ: int, flags: int, txid: int, seq: int, nfds: int, body_len: int) -> bytes:
    """The 32-byte header (section 3)."""
    return _HDR.pack(MAGIC, version, typ, flags, txid, seq, nfds, 0, body_len, 0)


def decode(data: bytes, fds: list[int], max_version: int = MAX_VERSION) -> Msg:
    """Check a received datagram in the order of section 3 and return it as
    a message. On failure every descriptor in fds is closed and a
    :class:`WireError` raised."""
    try:
        if len(data) < HEADER_LEN:
            raise ShortError(f"message shorter than its header: {len(data)} bytes")
        magic, ver, typ, flags, txid, seq, nfds, _, blen, _ = _HDR.unpack_from(data)
        if magic != MAGIC:
            raise MagicError(f"bad magic {magic!r}")
        if ver < MIN_VERSION or ver > max_version:
            raise VersionError(f"unsupported protocol version: {ver} (this side speaks {MIN_VERSION}..{max_version})")
        if typ not in KNOWN_TYPES:
            raise TypeError_(f"unknown message type {typ}")
        if blen > MAX_BODY:
            raise TooLargeError(f"message too large: body of {blen} bytes")
        if blen != len(data) - HEADER_LEN:
            raise BodyLenError(f"body length {blen} does not match datagram of {len(data)} bytes")
        if nfds != len(fds):
            raise FDCountError(f"header announces {nfds} descriptors, {len(fds)} arrived")
        if len(fds) > MAX_FDS:
            raise TooLargeError(f"message too large: {len(fds)} descriptors")
    except WireError:
        close_all(fds)
        raise
    return Msg(type=typ, body=bytes(data[HEADER_LEN:]), fds=fds, txid=txid, seq=seq, flags=flags, version=ver)


class Conn:
    """A ``SOCK_SEQPACKET`` unix socket carrying whole messages.

    ``version`` is the header version of messages sent: 1 until the session
    agreed on another in Welcome (the pair always uses 1).
    """

    def __init__(self, sock: socket.socket, version: int = MIN_VERSION) -> None:
        self.sock = sock
        self.version = version

    @classmethod
    def dial(cls, path: str) -> "Conn":
        """Connect to the agent socket at path."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"dial agent {path}: {e.strerror}") from e
        return cls(s)

    @classmethod
    def from_fd(cls, fd: int) -> "Conn":
        """Take ownership of a received pair end. The descriptor is closed
        if it is not a unix SOCK_SEQPACKET socket."""
        try:
            s = socket.socket(fileno=fd)
        except OSError as e:
            close_all([fd])
            raise MalformedError(f"pair descriptor: {e}") from e
        if s.family != socket.AF_UNIX or s.type != socket.SOCK_SEQPACKET:
            s.close()
            raise MalformedError(f"pair descriptor is not a unix seqpacket socket ({s.family!r}, {s.type!r})")
        return cls(s)

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def settimeout(self, t: float | None) -> None:
        """Bound the next receives (None: block)."""
        self.sock.settimeout(t)

    def send(self, typ: int, body: bytes = b"", fds: Sequence[int] = (), txid: int = 0, seq: int = 0, flags: int = 0) -> None:
        """Send one message in one sendmsg. The caller keeps its descriptors."""
        if len(body) > MAX_BODY:
            raise TooLargeError(f"message too large: body of {len(body)} bytes")
        if len(fds) > MAX_FDS:
            raise TooLargeError(f"message too large: {len(fds)} descriptors")
        data = encode_header(self.version, typ, flags, txid, seq, len(fds), len(body)) + body
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        n = self.sock.sendmsg([data], anc)
        if n != len(data):
            raise WireError(f"short write: {n} of {len(data)} bytes")

    def recv(self) -> Msg:
        """Receive one message. Raises :class:`ClosedError` at end of file,
        another :class:`WireError` for a datagram that fails a check (its
        descriptors closed), ``TimeoutError`` or ``OSError`` from the socket."""
        data, anc, mflags, _ = self.sock.recvmsg(MAX_MESSAGE + 1, _ANC, socket.MSG_CMSG_CLOEXEC)
        fds: list[int] = []
        foreign = False
        for level, ctype, cdata in anc:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                n = len(cdata) // 4
                fds.extend(struct.unpack(f"{n}i", cdata[: n * 4]))
            else:
                foreign = True
        if not data and not anc:
            raise ClosedError("peer closed the connection")
        if mflags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE:
            close_all(fds)
            raise TruncatedError("datagram or control data truncated by the kernel")
        if foreign:
            close_all(fds)
            raise MalformedError("control message other than SCM_RIGHTS")
        return decode(data, fds)


# Bodies (section 5).


class _Dec:
    """Reads little-endian fields from a body, remembering the first error."""

    def __init__(self, b: bytes) -> None:
        self.b = memoryview(b)
        self.off = 0

    def take(self, n: int) -> bytes:
        if self.off + n > len(self.b):
            raise MalformedError(f"malformed body: short ({len(self.b)} bytes)")
        v = bytes(self.b[self.off : self.off + n])
        self.off += n
        return v

    def unpack(self, fmt: str) -> tuple[int, ...]:
        s = struct.calcsize(fmt)
        return struct.unpack("<" + fmt, self.take(s))

    def str_(self) -> str:
        (n,) = self.unpack("H")
        return self.take(n).decode("utf-8", "replace")

    def done(self, what: str) -> None:
        if self.off != len(self.b):
            raise MalformedError(f"malformed body: {what} has {len(self.b) - self.off} trailing bytes")


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise TooLargeError(f"string of {len(b)} bytes")
    return struct.pack("<H", len(b)) + b


@dataclass
class Hello:
    """Body of Hello: the first message of a session."""

    min_version: int = MIN_VERSION
    max_version: int = MAX_VERSION
    role: int = ROLE_APP
    flags: int = 0
    name: str = ""

    def marshal(self) -> bytes:
        """Encode the body."""
        return struct.pack("<HHBBH", self.min_version, self.max_version, self.role, self.flags, 0) + _str(self.name)

    @classmethod
    def unmarshal(cls, b: bytes) -> "Hello":
        """Decode the body."""
        d = _Dec(b)
        mn, mx, role, flags, _ = d.unpack("HHBBH")
        name = d.str_()
        d.done("hello")
        return cls(mn, mx, role, flags, name)


@dataclass
class Welcome:
    """Body of Welcome: the agent accepted the session."""

    version: int = 0
    flags: int = 0
    pid: int = 0
    session_id: int = 0

    def marshal(self) -> bytes:
        """Encode the body."""
        return struct.pack("<HHIQ", self.version, self.flags, self.pid, self.session_id)

    @classmethod
    def unmarshal(cls, b: bytes) -> "Welcome":
        """Decode the body."""
        d = _Dec(b)
        v = cls(*d.unpack("HHIQ"))
        d.done("welcome")
        return v


@dataclass
class Failure:
    """Body of Error and Abort: a code and a reason."""

    code: int
    reason: str = ""

    def marshal(self) -> bytes:
        """Encode the body, cutting the reason to 4096 bytes."""
        r = self.reason.encode()[:MAX_REASON]
        return struct.pack("<I", self.code) + _str(r)

    @classmethod
    def unmarshal(cls, b: bytes) -> "Failure":
        """Decode the body."""
        d = _Dec(b)
        (code,) = d.unpack("I")
        reason = d.str_()
        d.done("failure")
        return cls(code, reason)

    def __str__(self) -> str:
        return f"{code_name(self.code)}: {self.reason}"


@dataclass
class Prepare:
    """Body of Prepare: the agent asks the source to export."""

    what: int = MOVE_ALL
    timeout_ms: int = 0
    target: int = 0

    def marshal(self) -> bytes:
        """Encode the body."""
        return struct.pack("<IIQ", self.what, self.timeout_ms, self.target)

    @classmethod
    def unmarshal(cls, b: bytes) -> "Prepare":
        """Decode the body."""
        d = _Dec(b)
        v = cls(*d.unpack("IIQ"))
        d.done("prepare")
        return v


@dataclass
class Begin:
    """Body of Begin: a handoff to this process starts."""

    timeout_ms: int = 0
    source: int = 0
    source_name: str = ""

    def marshal(self) -> bytes:
        """Encode the body."""
        return struct.pack("<IIQ", self.timeout_ms, 0, self.source) + _str(self.source_name)

    @classmethod
    def unmarshal(cls, b: bytes) -> "Begin":
        """Decode the body."""
        d = _Dec(b)
        t, _, src = d.unpack("IIQ")
        name = d.str_()
        d.done("begin")
        return cls(t, src, name)


@dataclass
class Summary:
    """Body of Exported, End and Ready: totals of a transfer."""

    listeners: int = 0
    conns: int = 0
    packets: int = 0
    batches: int = 0
    state_bytes: int = 0
    freeze_start_ns: int = 0
    export_done_ns: int = 0

    def marshal(self) -> bytes:
        """Encode the body."""
        return struct.pack("<IIIIQQQ", self.listeners, self.conns, self.packets, self.batches, self.state_bytes, self.freeze_start_ns, self.export_done_ns)

    @classmethod
    def unmarshal(cls, b: bytes) -> "Summary":
        """Decode the body: 40 bytes, or the 48 of a version-3 pre-copy
        (whose copies and seals counts this side, of version 2, ignores)."""
        d = _Dec(b)
        v = cls(*d.unpack("IIIIQQQ"))
        if len(b) == 48:
            d.unpack("II")
        d.done("summary")
        return v


def stamp(mono_ns: int | None = None) -> bytes:
    """Body of Committed and Serving: a CLOCK_MONOTONIC stamp (now by default)."""
    return struct.pack("<Q", monotonic_ns() if mono_ns is None else mono_ns)


Buffer = bytes | bytearray | memoryview
"""A state record, or a piece of one."""

State = Buffer | Sequence[Buffer]
"""A state record as a sender may give it: one buffer, or a sequence of
buffers that are concatenated on the wire (and never copied into one when
they travel in a memfd)."""


def state_parts(st: State) -> Sequence[Buffer]:
    """The buffers of a state record."""
    if isinstance(st, (bytes, bytearray, memoryview)):
        return (st,)
    return st


def state_len(st: State) -> int:
    """The length of a state record in bytes."""
    if type(st) is bytes:
        return len(st)
    if isinstance(st, (bytes, bytearray, memoryview)):
        return memoryview(st).nbytes
    return sum(memoryview(b).nbytes for b in st)


@dataclass
class Entry:
    """One descriptor of a batch: its kind, key and state record (received
    entries always hold bytes)."""

    kind: int
    key: str
    state: State = b""


@dataclass
class BatchInfo:
    """A decoded Batch body."""

    entries: list[Entry]
    state_lens: list[int]
    memfd: bool
    state_sum: int


_ENT = struct.Struct("<BBHI")


def inline_size(entries: Sequence[Entry]) -> int:
    """The body size of entries with every state inline."""
    return 8 + sum(8 + len(e.key.encode()) + state_len(e.state) for e in entries)


def marshal_batch(entries: Sequence[Entry]) -> tuple[bytes, int, list[Buffer]]:
    """Encode a Batch body: returns (body, flags, states). When the states do
    not fit inline (section 9), flags is BATCH_MEMFD, the body holds the
    entries without their states and ``states`` lists the buffers the memfd
    must hold, in order (for :func:`new_state_memfd`); otherwise it is empty."""
    if not entries:
        raise MalformedError("malformed body: empty batch")
    keys = [e.key.encode() for e in entries]
    for k in keys:
        if len(k) > MAX_KEY:
            raise TooLargeError(f"key of {len(k)} bytes, limit {MAX_KEY}")
    lens = [state_len(e.state) for e in entries]
    for n in lens:
        if n > MAX_STATE:
            raise TooLargeError(f"state of {n} bytes, limit {MAX_STATE}")
    size = 8 + sum(8 + len(k) + n for k, n in zip(keys, lens))
    memfd = size > MAX_BODY
    parts: list[Buffer] = [struct.pack("<HHI", len(entries), BATCH_MEMFD if memfd else 0, 0)]
    for k, e, n in zip(keys, entries, lens):
        parts.append(_ENT.pack(e.kind, 0, len(k), n))
        parts.append(k)
        if not memfd:
            parts.extend(state_parts(e.state))
    body = b"".join(parts)
    if len(body) > MAX_BODY:
        raise TooLargeError(f"batch body of {len(body)} bytes even with its states in a memfd")
    states: list[Buffer] = []
    if memfd:
        for e in entries:
            states.extend(b for b in state_parts(e.state) if len(b))
    return body, (BATCH_MEMFD if memfd else 0), states


def decode_batch(body: bytes, nfds: int) -> BatchInfo:
    """Decode and check a Batch body that arrived with nfds descriptors."""
    d = _Dec(body)
    count, flags, _ = d.unpack("HHI")
    if flags & ~BATCH_MEMFD:
        raise MalformedError(f"decode batch: unknown flags {flags:#x}")
    memfd = bool(flags & BATCH_MEMFD)
    want = count + (1 if memfd else 0)
    if want != nfds:
        raise FDCountError(f"decode batch: {count} entries (memfd {memfd}) but {nfds} descriptors")
    if count == 0:
        raise MalformedError("decode batch: empty batch")
    entries: list[Entry] = []
    lens: list[int] = []
    total = 0
    for i in range(count):
        kind, _, klen, slen = d.unpack("BBHI")
        if kind < KIND_LISTENER or kind > KIND_PACKET:
            raise MalformedError(f"decode batch: entry {i} has unknown kind {kind}")
        if klen > MAX_KEY:
            raise TooLargeError(f"decode batch: entry {i} key of {klen} bytes, limit {MAX_KEY}")
        if slen > MAX_STATE:
            raise TooLargeError(f"decode batch: entry {i} state of {slen} bytes, limit {MAX_STATE}")
        key = d.take(klen).decode("utf-8", "replace")
        state = b"" if memfd else d.take(slen)
        entries.append(Entry(kind, key, state))
        lens.append(slen)
        total += slen
    d.done("batch")
    return BatchInfo(entries, lens, memfd, total)


_F_SEALS_NEEDED = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def new_state_memfd(states: Buffer | Sequence[Buffer]) -> int:
    """A sealed memfd holding states, the concatenation of the buffers given
    (section 9), written with pwritev: no copy of them is made in this
    process. The caller closes it."""
    bufs = [memoryview(b).cast("B") for b in state_parts(states)]
    fd = os.memfd_create("handoff-state", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        off = 0
        i = 0
        while i < len(bufs):
            chunk = bufs[i:i + 1024]  # IOV_MAX
            n = os.pwritev(fd, chunk, off)
            off += n
            # Skip what was written, keeping the rest of a partly written buffer.
            while n > 0 and i < len(bufs):
                if n >= len(bufs[i]):
                    n -= len(bufs[i])
                    i += 1
                else:
                    bufs[i] = bufs[i][n:]
                    n = 0
            while i < len(bufs) and len(bufs[i]) == 0:
                i += 1
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _F_SEALS_NEEDED | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_state_memfd(fd: int, want: int) -> bytes:
    """Read a received state memfd with pread, after checking that it is a
    sealed regular file of exactly want bytes. Does not close fd."""
    check_state_memfd(fd, want)
    return _pread_exact(fd, want, 0)


def read_states(fd: int, bi: BatchInfo) -> None:
    """Check a received state memfd against a batch and read each entry's
    state from it with its own pread, at its offset: one copy per state, and
    the memfd's shared file offset untouched. Does not close fd."""
    check_state_memfd(fd, bi.state_sum)
    off = 0
    for e, n in zip(bi.entries, bi.state_lens):
        e.state = _pread_exact(fd, n, off) if n else b""
        off += n


def _pread_exact(fd: int, n: int, off: int) -> bytes:
    first = os.pread(fd, n, off)
    if len(first) == n:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        chunk = os.pread(fd, n - got, off + got)
        if not chunk:
            raise MalformedError("read state memfd: short file")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def check_state_memfd(fd: int, want: int) -> None:
    """Refuse a state memfd unless it is a regular file sealed against
    writes and resizing, of exactly want bytes."""
    import stat as _stat

    st = os.fstat(fd)
    if not _stat.S_ISREG(st.st_mode):
        raise MalformedError(f"state memfd: not a regular file (mode {st.st_mode:#o})")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as e:
        raise MalformedError(f"state memfd: cannot read its seals: {e}") from e
    if seals & _F_SEALS_NEEDED != _F_SEALS_NEEDED:
        raise MalformedError(f"state memfd: not sealed against writes and resizing (seals {seals:#x})")
    if st.st_size != want:
        raise MalformedError(f"state memfd: {st.st_size} bytes, batch announces {want}")


def split_states(bi: BatchInfo, states: bytes) -> None:
    """Cut a memfd's contents into the entries' states, in order."""
    off = 0
    for e, n in zip(bi.entries, bi.state_lens):
        e.state = states[off : off + n]
        off += n


def reserve_fd_table() -> None:
    """Grow this process's descriptor table now rather than during a
    transfer (section 8): dup onto the highest slot the limit allows, then
    close it. An optimisation only; failures are ignored, and an open
    descriptor in that slot is left alone."""
    import resource

    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        top = min(soft, 65536) - 1
        if top <= 2:
            return
        try:
            fcntl.fcntl(top, fcntl.F_GETFD)
            return  # in use: the table is that large already
        except OSError:
            pass
        fd = os.dup(0) if _valid(0) else os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.dup2(fd, top, inheritable=False)
            os.close(top)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno not in (errno.EMFILE, errno.EBADF, errno.EINVAL, errno.ENFILE):
            raise


def _valid(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False
