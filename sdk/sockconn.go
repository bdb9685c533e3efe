package handoff

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sockConn is the net.Conn an imported connection comes back as.
//
// Adopting it costs no system call, and serving it costs the fewest that
// can be: at thousands of connections and microseconds per system call
// on a virtual machine, per-connection calls were most of the pause.
// net.FileConn costs about eleven per connection (dup, flags, socket type,
// both addresses, poller registration, closing the original), and even
// an *os.File costs two (flags, poller registration) before any I/O.
//
// So a sockConn starts as the bare descriptor and does its I/O with
// MSG_DONTWAIT, which never blocks whatever the descriptor's flags. Only
// when an operation would have to wait, or a deadline is set, does it
// hand the descriptor to the runtime poller behind an *os.File, and from
// then on behaves exactly like one. A connection that never waits (a
// stream whose client keeps up) never pays for the poller, and one that
// does pays once, in the goroutine that serves it, after Ready.
//
// It is not a *net.TCPConn; it offers CloseRead and CloseWrite, and
// SyscallConn, so it can be tracked and moved again.
type sockConn struct {
	fd     int
	family string // "tcp" or "unix", for errors and addresses

	f atomic.Pointer[os.File] // the poller's file, once there is one

	// mu is read-held around each direct system call, and write-held to
	// make f or to close a descriptor that has no f: Close never pulls
	// the descriptor from under a call, which could then hit another
	// file that reused the number. Direct calls never block, so neither
	// does Close for long.
	mu     sync.RWMutex
	closed bool

	// gone is set by Close and release, for the operations whose
	// *os.File error after a Close is not os.ErrClosed.
	gone atomic.Bool

	// rmu and wmu make each Read and each Write whole with respect to
	// others in the same direction, as the net package does, across the
	// switch from direct calls to the poller.
	rmu, wmu sync.Mutex

	once   sync.Once
	la, ra net.Addr
}

// newSockConn adopts fd, which must be a connected stream socket of
// family ("tcp" or "unix"; empty to ask the kernel). The descriptor is
// owned by the result, which closes it on Close.
func newSockConn(fd int, family string) *sockConn {
	c := new(sockConn)
	c.init(fd, family)
	return c
}

// init is newSockConn for a zero sockConn in place.
func (c *sockConn) init(fd int, family string) {
	if family != "tcp" && family != "unix" {
		family = "tcp"
		if sa, err := unix.Getsockname(fd); err == nil {
			if _, ok := sa.(*unix.SockaddrUnix); ok {
				family = "unix"
			}
		}
	}
	c.fd, c.family = fd, family
}

// file returns the *os.File, handing the descriptor to the poller first
// if that has not happened yet.
func (c *sockConn) file() (*os.File, error) {
	if f := c.f.Load(); f != nil {
		return f, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.f.Load(); f != nil {
		return f, nil
	}
	if c.closed {
		return nil, fs.ErrClosed
	}
	// A descriptor from a process not written in Go may be blocking, and
	// os.NewFile would keep a blocking one out of the poller: every read
	// would then hold an OS thread.
	if err := unix.SetNonblock(c.fd, true); err != nil {
		return nil, os.NewSyscallError("setnonblock", err)
	}
	f := os.NewFile(uintptr(c.fd), "handoff-conn")
	c.f.Store(f)
	return f, nil
}

// sysfd returns the descriptor for export, leaving it out of the poller.
func (c *sockConn) sysfd() (int, error) {
	if c.gone.Load() {
		return -1, c.opError("export", fs.ErrClosed)
	}
	c.mu.RLock()
	f, closed := c.f.Load(), c.closed
	c.mu.RUnlock()
	switch {
	case f != nil:
		raw, err := f.SyscallConn()
		if err != nil {
			return -1, c.opError("export", err)
		}
		fd, err := rawFD(raw)
		return fd, c.opError("export", err)
	case closed:
		return -1, c.opError("export", fs.ErrClosed)
	}
	// The descriptor cannot be closed under the caller: a frozen
	// connection is not closed until the migration is decided.
	return c.fd, nil
}

// dup duplicates the descriptor, for a pre-copy, while the connection
// holds it open.
func (c *sockConn) dup() (int, error) {
	if c.gone.Load() {
		return -1, c.opError("export", fs.ErrClosed)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if f := c.f.Load(); f != nil {
		raw, err := f.SyscallConn()
		if err != nil {
			return -1, c.opError("export", err)
		}
		fd, err := dupRaw(raw)
		return fd, c.opError("export", err)
	}
	if c.closed {
		return -1, c.opError("export", fs.ErrClosed)
	}
	fd, err := unix.FcntlInt(uintptr(c.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, c.opError("export", os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err))
	}
	return fd, nil
}

// release gives up the descriptor to the caller, who closes it, if it
// never reached the poller; otherwise it reports false and the caller
// closes the connection as usual. Later operations fail as after Close.
func (c *sockConn) release() (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f.Load() != nil || c.closed {
		return -1, false
	}
	c.closed = true
	c.gone.Store(true)
	return c.fd, true
}

// direct runs one non-blocking system call on the bare descriptor. ok is
// false when the descriptor is already with the poller, which then does
// the operation instead.
func (c *sockConn) direct(call func(fd int) error) (ok bool, err error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.f.Load() != nil {
		return false, nil
	}
	if c.closed {
		return true, fs.ErrClosed
	}
	return true, call(c.fd)
}

func (c *sockConn) addrs() {
	c.once.Do(func() {
		if sa, err := unix.Getsockname(c.fd); err == nil {
			c.la = toAddr(sa)
		}
		if sa, err := unix.Getpeername(c.fd); err == nil {
			c.ra = toAddr(sa)
		}
	})
}

func toAddr(sa unix.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}
	}
	return nil
}

// opError makes os.File's and direct calls' errors look like the net
// package's, so that callers testing for net.Error, net.ErrClosed or
// timeouts see what they would see on a *net.TCPConn.
func (c *sockConn) opError(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = os.ErrDeadlineExceeded
	} else if errors.Is(err, fs.ErrClosed) {
		err = net.ErrClosed
	} else if pe, ok := err.(*fs.PathError); ok {
		err = os.NewSyscallError(op, pe.Err)
	}
	c.addrs()
	return &net.OpError{Op: op, Net: c.family, Source: c.la, Addr: c.ra, Err: err}
}

// Read reads from the connection.
func (c *sockConn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.f.Load() == nil {
		n := 0
		ok, err := c.direct(func(fd int) error {
			if len(b) == 0 {
				return nil
			}
			for {
				var err error
				n, _, err = unix.Recvfrom(fd, b, unix.MSG_DONTWAIT)
				switch {
				case err == unix.EINTR:
					continue
				case err == unix.EAGAIN:
					n = -1 // nothing yet: wait in the poller
					return nil
				case err != nil:
					n = 0
					return os.NewSyscallError("recvfrom", err)
				case n == 0:
					return io.EOF
				}
				return nil
			}
		})
		if ok && n >= 0 {
			if err == io.EOF {
				return 0, err
			}
			return n, c.opError("read", err)
		}
	}
	f, err := c.file()
	if err != nil {
		return 0, c.opError("read", err)
	}
	n, err := f.Read(b)
	if err == io.EOF {
		return n, err
	}
	return n, c.opError("read", err)
}

// Write writes to the connection.
func (c *sockConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n := 0
	if c.f.Load() == nil {
		ok, err := c.direct(func(fd int) error {
			for n < len(b) {
				m, err := unix.SendmsgN(fd, b[n:], nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
				switch {
				case err == unix.EINTR:
					continue
				case err == unix.EAGAIN:
					return err
				case err != nil:
					return os.NewSyscallError("sendmsg", err)
				}
				n += m
			}
			return nil
		})
		if ok && err != unix.EAGAIN {
			return n, c.opError("write", err)
		}
		// The send buffer is full: the poller waits for room and writes
		// the rest.
	}
	f, err := c.file()
	if err != nil {
		return n, c.opError("write", err)
	}
	m, err := f.Write(b[n:])
	return n + m, c.opError("write", err)
}

// Close closes this process's descriptor of the connection.
func (c *sockConn) Close() error {
	c.gone.Store(true)
	if f := c.f.Load(); f != nil {
		return c.opError("close", f.Close())
	}
	c.mu.Lock()
	if f := c.f.Load(); f != nil {
		c.mu.Unlock()
		return c.opError("close", f.Close())
	}
	if c.closed {
		c.mu.Unlock()
		return c.opError("close", fs.ErrClosed)
	}
	c.closed = true
	c.mu.Unlock()
	if err := unix.Close(c.fd); err != nil {
		return c.opError("close", os.NewSyscallError("close", err))
	}
	return nil
}

// LocalAddr is the socket's own address.
func (c *sockConn) LocalAddr() net.Addr { c.addrs(); return c.la }

// RemoteAddr is the peer's address.
func (c *sockConn) RemoteAddr() net.Addr { c.addrs(); return c.ra }

// setDeadline applies set to the poller's file. Clearing a deadline on
// a connection that has none needs no poller.
func (c *sockConn) setDeadline(op string, t time.Time, set func(*os.File, time.Time) error) error {
	if c.gone.Load() {
		return c.opError(op, fs.ErrClosed)
	}
	if t.IsZero() && c.f.Load() == nil {
		return nil
	}
	f, err := c.file()
	if err != nil {
		return c.opError(op, err)
	}
	return c.opError(op, set(f, t))
}

// SetDeadline sets the read and write deadlines.
func (c *sockConn) SetDeadline(t time.Time) error {
	return c.setDeadline("set deadline", t, (*os.File).SetDeadline)
}

// SetReadDeadline sets the read deadline.
func (c *sockConn) SetReadDeadline(t time.Time) error {
	return c.setDeadline("set read deadline", t, (*os.File).SetReadDeadline)
}

// SetWriteDeadline sets the write deadline.
func (c *sockConn) SetWriteDeadline(t time.Time) error {
	return c.setDeadline("set write deadline", t, (*os.File).SetWriteDeadline)
}

// SyscallConn gives access to the descriptor, as *net.TCPConn does.
func (c *sockConn) SyscallConn() (syscall.RawConn, error) {
	f, err := c.file()
	if err != nil {
		return nil, c.opError("raw conn", err)
	}
	return f.SyscallConn()
}

// CloseWrite shuts down the writing side of the socket.
func (c *sockConn) CloseWrite() error { return c.shutdown(unix.SHUT_WR, "close write") }

// CloseRead shuts down the reading side of the socket.
func (c *sockConn) CloseRead() error { return c.shutdown(unix.SHUT_RD, "close read") }

func (c *sockConn) shutdown(how int, op string) error {
	if ok, err := c.direct(func(fd int) error { return unix.Shutdown(fd, how) }); ok {
		if err != nil && !errors.Is(err, fs.ErrClosed) {
			err = os.NewSyscallError("shutdown", err)
		}
		return c.opError(op, err)
	}
	f, err := c.file()
	if err != nil {
		return c.opError(op, err)
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return c.opError(op, err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), how) }); err != nil {
		return c.opError(op, err)
	}
	if serr != nil {
		return c.opError(op, os.NewSyscallError("shutdown", serr))
	}
	return nil
}
