package handoff

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sockConn is the net.Conn an imported connection comes back as: the
// socket behind an *os.File, which the runtime poller drives like any
// net.Conn (deadlines included). Adopting a descriptor this way costs
// two system calls; net.FileConn costs about eleven (dup, flags, socket
// type, both addresses, poller registration, then closing the original),
// which at thousands of connections was most of the pause.
//
// It is not a *net.TCPConn; it offers CloseRead and CloseWrite, and
// SyscallConn, so it can be tracked and moved again.
type sockConn struct {
	f      *os.File
	fd     int
	family string // "tcp" or "unix", for errors and addresses

	once   sync.Once
	la, ra net.Addr
}

// newSockConn adopts fd, which must be a connected stream socket of
// family ("tcp" or "unix"; empty to ask the kernel). The descriptor is
// owned by the result.
func newSockConn(fd int, family string) (*sockConn, error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	if fl&unix.O_NONBLOCK == 0 {
		// A blocking descriptor would not be polled: reads would park
		// an OS thread each.
		if err := unix.SetNonblock(fd, true); err != nil {
			return nil, os.NewSyscallError("setnonblock", err)
		}
	}
	if family != "tcp" && family != "unix" {
		family = "tcp"
		if sa, err := unix.Getsockname(fd); err == nil {
			if _, ok := sa.(*unix.SockaddrUnix); ok {
				family = "unix"
			}
		}
	}
	return &sockConn{f: os.NewFile(uintptr(fd), "handoff-conn"), fd: fd, family: family}, nil
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

// opError makes os.File's errors look like the net package's, so that
// callers testing for net.Error, net.ErrClosed or timeouts see what they
// would see on a *net.TCPConn.
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
	n, err := c.f.Read(b)
	if err == io.EOF {
		return n, err
	}
	return n, c.opError("read", err)
}

// Write writes to the connection.
func (c *sockConn) Write(b []byte) (int, error) {
	n, err := c.f.Write(b)
	return n, c.opError("write", err)
}

// Close closes this process's descriptor of the connection.
func (c *sockConn) Close() error { return c.opError("close", c.f.Close()) }

// LocalAddr is the socket's own address.
func (c *sockConn) LocalAddr() net.Addr { c.addrs(); return c.la }

// RemoteAddr is the peer's address.
func (c *sockConn) RemoteAddr() net.Addr { c.addrs(); return c.ra }

// SetDeadline sets the read and write deadlines.
func (c *sockConn) SetDeadline(t time.Time) error { return c.f.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (c *sockConn) SetReadDeadline(t time.Time) error { return c.f.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (c *sockConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }

// SyscallConn gives access to the descriptor, as *net.TCPConn does.
func (c *sockConn) SyscallConn() (syscall.RawConn, error) { return c.f.SyscallConn() }

// CloseWrite shuts down the writing side of the socket.
func (c *sockConn) CloseWrite() error { return c.shutdown(unix.SHUT_WR, "close write") }

// CloseRead shuts down the reading side of the socket.
func (c *sockConn) CloseRead() error { return c.shutdown(unix.SHUT_RD, "close read") }

func (c *sockConn) shutdown(how int, op string) error {
	raw, err := c.f.SyscallConn()
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
