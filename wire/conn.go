package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Msg is one received or to-be-sent message. FDs belong to whoever holds
// the Msg: close them (CloseFDs) unless they are passed on.
type Msg struct {
	Header
	Body []byte
	FDs  []int
}

// CloseFDs closes every descriptor the message carries and forgets them.
func (m *Msg) CloseFDs() {
	CloseAll(m.FDs)
	m.FDs = nil
}

// CloseAll closes every descriptor in fds, ignoring errors: used on paths
// where the descriptors are being discarded. Descriptors received in one
// message are usually consecutive numbers, and a system call costs
// microseconds on a virtual machine, so each run of consecutive numbers
// is closed with one close_range instead of one close each.
func CloseAll(fds []int) {
	for i := 0; i < len(fds); {
		fd := fds[i]
		if fd < 0 {
			i++
			continue
		}
		j := i + 1
		for j < len(fds) && fds[j] == fds[j-1]+1 {
			j++
		}
		if j-i > 1 && closeRange(fd, fds[j-1]) {
			i = j
			continue
		}
		unix.Close(fd)
		i++
	}
}

// noCloseRange is set once the kernel turned close_range down (before
// Linux 5.9, or a seccomp filter), so later calls close one by one.
var noCloseRange atomic.Bool

// closeRange closes first..last and reports whether it did.
func closeRange(first, last int) bool {
	if noCloseRange.Load() {
		return false
	}
	if err := unix.CloseRange(uint(first), uint(last), 0); err != nil {
		noCloseRange.Store(true)
		return false
	}
	return true
}

// Conn sends and receives whole messages on a SOCK_SEQPACKET unix socket.
// Send may be called from several goroutines; Recv from one at a time.
type Conn struct {
	uc      *net.UnixConn
	raw     syscall.RawConn // nil: use uc's own calls
	version uint8

	rmu  sync.Mutex
	rbuf []byte
	oob  []byte

	wmu  sync.Mutex
	wbuf []byte
	woob []byte
}

// oobSpace fits the largest legal SCM_RIGHTS message plus slack, so that an
// over-full control message is reported by the kernel as MSG_CTRUNC rather
// than silently fitting.
var oobSpace = unix.CmsgSpace(MaxFDs*4) + unix.CmsgSpace(64)

// NewConn wraps a connected "unixpacket" socket. The protocol version
// starts at MinVersion and is raised by SetVersion after Hello/Welcome.
func NewConn(uc *net.UnixConn) *Conn {
	raw, _ := uc.SyscallConn()
	return &Conn{
		uc:      uc,
		raw:     raw,
		version: MinVersion,
		rbuf:    make([]byte, MaxMessage+1),
		oob:     make([]byte, oobSpace),
		wbuf:    make([]byte, 0, 4096),
	}
}

// Dial connects to the agent socket at path.
func Dial(path string) (*Conn, error) {
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("dial agent socket %s: %w", path, err)
	}
	return NewConn(uc), nil
}

// Pair returns two connected Conns, used as the private channel between
// source and target of one transaction, plus the raw descriptors of each
// end so they can be passed on. The caller owns both descriptors; the Conns
// are not created here because each end is meant for another process.
func Pair() (a, b int, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("socketpair: %w", err)
	}
	return fds[0], fds[1], nil
}

// FromFD turns a received SOCK_SEQPACKET descriptor into a Conn. The
// descriptor is consumed (closed) whether or not this succeeds.
func FromFD(fd int, name string) (*Conn, error) {
	f := fileFromFD(fd, name)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("adopt %s descriptor: %w", name, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("adopt %s descriptor: %w: not a unix socket", name, ErrMalformed)
	}
	return NewConn(uc), nil
}

// SetVersion records the version agreed in Hello/Welcome; later messages
// are sent with it.
func (c *Conn) SetVersion(v uint8) { c.version = v }

// Version is the protocol version messages are sent with.
func (c *Conn) Version() uint8 { return c.version }

// Unix returns the underlying socket, for deadlines and peer credentials.
func (c *Conn) Unix() *net.UnixConn { return c.uc }

// Close closes the socket.
func (c *Conn) Close() error { return c.uc.Close() }

// SetReadDeadline bounds the next Recv.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.uc.SetReadDeadline(t) }

// Send writes one message. fds are not closed: the kernel duplicates them
// into the message and the caller keeps its own.
func (c *Conn) Send(m Msg) error {
	if len(m.Body) > MaxBody {
		return fmt.Errorf("send %v: %w: body of %d bytes, limit %d", m.Type, ErrTooLarge, len(m.Body), MaxBody)
	}
	if len(m.FDs) > MaxFDs {
		return fmt.Errorf("send %v: %w: %d descriptors, limit %d", m.Type, ErrTooLarge, len(m.FDs), MaxFDs)
	}
	m.Version = c.version
	m.NFDs = uint16(len(m.FDs))
	m.BodyLen = uint32(len(m.Body))
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := c.wbuf[:0]
	b = append(b, make([]byte, HeaderLen)...)
	PutHeader(b, m.Header)
	b = append(b, m.Body...)
	c.wbuf = b[:0]
	var oob []byte
	if len(m.FDs) > 0 {
		oob = putRights(&c.woob, m.FDs)
	}
	n, oobn, err := c.writeMsg(b, oob)
	if err != nil {
		return fmt.Errorf("send %v: %w", m.Type, err)
	}
	if n != len(b) || oobn != len(oob) {
		return fmt.Errorf("send %v: short write %d/%d bytes, %d/%d control", m.Type, n, len(b), oobn, len(oob))
	}
	return nil
}

// Recv reads one message. On any error every descriptor that arrived with
// the datagram has already been closed. io.EOF-like closes are reported as
// ErrClosed.
func (c *Conn) Recv() (Msg, error) { return c.RecvWith(nil) }

// RecvWith is Recv with the body copied into memory from alloc, which
// returns at least n bytes (nil alloc: a new slice). A receiver of many
// messages can hand out memory it prepared, instead of fresh memory per
// message.
func (c *Conn) RecvWith(alloc func(n int) []byte) (Msg, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	n, oobn, flags, err := c.readMsg(c.rbuf, c.oob)
	fds, perr := parseRights(c.oob[:oobn])
	if err != nil {
		CloseAll(fds)
		if errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET) {
			return Msg{}, fmt.Errorf("%w: %w", ErrClosed, err)
		}
		return Msg{}, fmt.Errorf("receive: %w", err)
	}
	if perr != nil {
		CloseAll(fds)
		return Msg{}, perr
	}
	if n == 0 && oobn == 0 {
		return Msg{}, ErrClosed
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > MaxMessage {
		CloseAll(fds)
		return Msg{}, fmt.Errorf("receive: %w (flags %#x, %d bytes, %d descriptors kept)", ErrTruncated, flags, n, len(fds))
	}
	h, body, err := Decode(c.rbuf[:n], len(fds))
	if err != nil {
		CloseAll(fds)
		return Msg{}, fmt.Errorf("receive: %w", err)
	}
	var b []byte
	if alloc != nil {
		b = alloc(len(body))[:len(body)]
		copy(b, body)
	} else {
		b = append([]byte(nil), body...)
	}
	return Msg{Header: h, Body: b, FDs: fds}, nil
}

// putRights is unix.UnixRights into a buffer kept for the next send.
func putRights(buf *[]byte, fds []int) []byte {
	datalen := len(fds) * 4
	n := unix.CmsgSpace(datalen)
	if cap(*buf) < n {
		*buf = make([]byte, unix.CmsgSpace(MaxFDs*4))
	}
	b := (*buf)[:n]
	clear(b)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.SOL_SOCKET
	h.Type = unix.SCM_RIGHTS
	h.SetLen(unix.CmsgLen(datalen))
	data := b[unix.CmsgLen(0):]
	for i, fd := range fds {
		binary.NativeEndian.PutUint32(data[4*i:], uint32(int32(fd)))
	}
	return b
}

// parseRights extracts every descriptor from SCM_RIGHTS control messages.
// It returns what it found even alongside an error, so the caller can close
// them.
func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	// One slice, sized from the control data (which holds more than
	// the descriptors): a receiver of thousands allocates once per
	// message, which matters while the collector is held off and every
	// allocation is fresh memory.
	fds := make([]int, 0, len(oob)/4)
	var bad error
	for rest := oob; len(rest) > 0; {
		h, data, r, err := unix.ParseOneSocketControlMessage(rest)
		if err != nil {
			bad = fmt.Errorf("receive: control data: %w: %w", ErrMalformed, err)
			break
		}
		rest = r
		if h.Level != unix.SOL_SOCKET || h.Type != unix.SCM_RIGHTS {
			bad = fmt.Errorf("receive: %w: unexpected control message level %d type %d", ErrMalformed, h.Level, h.Type)
			continue
		}
		if len(data)%4 != 0 {
			bad = fmt.Errorf("receive: rights: %w: %d bytes of descriptors", ErrMalformed, len(data))
			continue
		}
		for i := 0; i < len(data); i += 4 {
			fds = append(fds, int(int32(binary.NativeEndian.Uint32(data[i:]))))
		}
	}
	if len(fds) == 0 {
		fds = nil
	}
	return fds, bad
}
