package handoff

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// key names a listening socket across processes: the arguments the
// application passed to Listen or ListenPacket.
func key(network, addr string) string { return network + "|" + addr }

// deadliner is what freezing a listening socket needs from it.
type deadliner interface {
	SetDeadline(time.Time) error
}

// sockGate is the state shared by listener and packetConn: frozen during an
// outgoing migration, gated until Ready for inherited sockets.
type sockGate struct {
	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
	moved  bool
	closed bool
	busy   int           // goroutines inside the real Accept/ReadFrom
	gate   chan struct{} // non-nil for inherited sockets: closed by Ready
}

func (g *sockGate) init(inherited bool) {
	g.cond = sync.NewCond(&g.mu)
	if inherited {
		g.gate = make(chan struct{})
	}
}

// enter waits until I/O is allowed and counts the caller in.
func (g *sockGate) enter() error {
	if g.gate != nil {
		<-g.gate
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.frozen && !g.moved && !g.closed {
		g.cond.Wait()
	}
	if g.moved {
		return ErrMoved
	}
	if g.closed {
		return net.ErrClosed
	}
	g.busy++
	return nil
}

// leave counts the caller out and reports whether the error it got was
// the interruption of a freeze, in which case it should wait and retry.
func (g *sockGate) leave(err error) (retry bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.busy--
	if g.busy == 0 {
		g.cond.Broadcast()
	}
	var ne net.Error
	return err != nil && (g.frozen || g.moved) && errors.As(err, &ne) && ne.Timeout()
}

// freeze stops new I/O and interrupts what is in progress.
func (g *sockGate) freeze(d deadliner) {
	g.mu.Lock()
	g.frozen = true
	g.mu.Unlock()
	_ = d.SetDeadline(time.Unix(1, 0))
	g.mu.Lock()
	for g.busy > 0 {
		g.cond.Wait()
	}
	g.mu.Unlock()
}

func (g *sockGate) thaw(d deadliner) {
	_ = d.SetDeadline(time.Time{})
	g.mu.Lock()
	g.frozen = false
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *sockGate) markMoved() {
	g.mu.Lock()
	g.moved = true
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *sockGate) markClosed() (already bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	already = g.closed || g.moved
	g.closed = true
	g.cond.Broadcast()
	return already
}

func (g *sockGate) open() {
	if g.gate != nil {
		select {
		case <-g.gate:
		default:
			close(g.gate)
		}
	}
}

// listener is what Listen returns: the real listener behind a gate that a
// migration can close while it exports the socket.
type listener struct {
	sockGate
	copyMark
	p   *Process
	key string
	ln  net.Listener
	raw syscall.RawConn
}

// Accept waits for the next connection. It blocks while a migration is
// exporting the socket, and returns ErrMoved once the socket belongs to
// another process.
func (l *listener) Accept() (net.Conn, error) {
	for {
		if err := l.enter(); err != nil {
			return nil, &net.OpError{Op: "accept", Net: l.ln.Addr().Network(), Addr: l.ln.Addr(), Err: err}
		}
		c, err := l.ln.Accept()
		retry := l.leave(err)
		if c != nil {
			l.p.noteAccepted(c)
			return c, nil
		}
		if retry {
			continue
		}
		return nil, err
	}
}

// Close closes the listener in this process and stops tracking it.
func (l *listener) Close() error {
	if l.markClosed() {
		return nil
	}
	l.open()
	l.p.mu.Lock()
	delete(l.p.listeners, l)
	// A pre-copy holds a copy: without a shutdown the socket would go
	// on listening until the seal drops the copy. Once the freeze took
	// the listener it moves, and the shutdown would stop it in the new
	// process too.
	x := l.p.export
	shut := x != nil && l.copyGen == x.gen && !slices.Contains(x.listeners, l)
	l.p.mu.Unlock()
	if shut {
		shutdownRaw(l.raw)
	}
	return l.ln.Close()
}

// Addr is the listener's address.
func (l *listener) Addr() net.Addr { return l.ln.Addr() }

// Listen returns a listener for network ("tcp", "tcp4", "tcp6", "unix")
// and address. If the previous process handed over a listener that it
// opened with the same two arguments, that socket is returned, with its
// backlog of waiting connections, and Accept blocks until Ready has
// completed; otherwise a fresh socket is opened. Either way the listener
// is exported on the next outgoing migration.
func (p *Process) Listen(network, addr string) (net.Listener, error) {
	k := key(network, addr)
	p.mu.Lock()
	if p.moved {
		p.mu.Unlock()
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, ErrMoved)
	}
	var ln net.Listener
	if p.in != nil {
		ln = p.in.claimListener(k)
	}
	p.mu.Unlock()
	inherited := ln != nil
	if ln == nil {
		var err error
		ln, err = net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
	}
	sc, ok := ln.(syscall.Conn)
	d, ok2 := ln.(deadliner)
	if !ok || !ok2 {
		ln.Close()
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, ErrNotSupported)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	_ = d
	l := &listener{p: p, key: k, ln: ln, raw: raw}
	l.init(inherited)
	p.mu.Lock()
	p.listeners[l] = struct{}{}
	if inherited {
		p.in.gates = append(p.in.gates, &l.sockGate)
		p.in.onAbort = append(p.in.onAbort, func() { l.markClosed(); ln.Close() })
	}
	p.mu.Unlock()
	return l, nil
}

// packetConn is what ListenPacket returns: reads stop while a migration
// exports the socket.
type packetConn struct {
	sockGate
	copyMark
	net.PacketConn
	p   *Process
	key string
	raw syscall.RawConn
}

// ReadFrom reads a datagram. It blocks while a migration is exporting the
// socket, and returns ErrMoved once the socket belongs to another process.
func (c *packetConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		if err := c.enter(); err != nil {
			return 0, nil, &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Addr: c.LocalAddr(), Err: err}
		}
		n, a, err := c.PacketConn.ReadFrom(b)
		retry := c.leave(err)
		if retry && n == 0 {
			continue
		}
		return n, a, err
	}
}

// WriteTo sends a datagram; on an inherited socket it waits for Ready.
func (c *packetConn) WriteTo(b []byte, a net.Addr) (int, error) {
	if c.gate != nil {
		<-c.gate
	}
	return c.PacketConn.WriteTo(b, a)
}

// SetDeadline sets the read and write deadlines. A migration overrides
// the read deadline while it runs and clears it afterwards.
func (c *packetConn) SetDeadline(t time.Time) error { return c.PacketConn.SetDeadline(t) }

// Close closes the socket in this process and stops tracking it.
func (c *packetConn) Close() error {
	if c.markClosed() {
		return nil
	}
	c.open()
	c.p.mu.Lock()
	delete(c.p.packets, c)
	c.p.mu.Unlock()
	return c.PacketConn.Close()
}

// ListenPacket returns a datagram socket for network ("udp", "udp4",
// "udp6", "unixgram") and address: the one the previous process handed
// over for the same two arguments, or a fresh one. Datagrams that arrive
// during a migration wait in the socket's receive buffer.
func (p *Process) ListenPacket(network, addr string) (net.PacketConn, error) {
	k := key(network, addr)
	p.mu.Lock()
	if p.moved {
		p.mu.Unlock()
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, ErrMoved)
	}
	var pc net.PacketConn
	if p.in != nil {
		pc = p.in.claimPacket(k)
	}
	p.mu.Unlock()
	inherited := pc != nil
	if pc == nil {
		var err error
		pc, err = net.ListenPacket(network, addr)
		if err != nil {
			return nil, err
		}
	}
	sc, ok := pc.(syscall.Conn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, ErrNotSupported)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	c := &packetConn{PacketConn: pc, p: p, key: k, raw: raw}
	c.init(inherited)
	p.mu.Lock()
	p.packets[c] = struct{}{}
	if inherited {
		p.in.gates = append(p.in.gates, &c.sockGate)
		p.in.onAbort = append(p.in.onAbort, func() { c.markClosed(); pc.Close() })
	}
	p.mu.Unlock()
	return c, nil
}

// copyMark says which pre-copy sent a socket, and as which copy: copyGen
// is the export's gen (0 for none), copyIdx the copy's index. Under p.mu.
type copyMark struct {
	copyGen uint64
	copyIdx uint32
}

// dupRaw duplicates the descriptor behind raw (close-on-exec) while raw
// holds it, so that a close racing the call cannot hand the number to
// another socket first.
func dupRaw(raw syscall.RawConn) (int, error) {
	nfd := -1
	var derr error
	if err := raw.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
	}
	return nfd, nil
}

// shutdownRaw shuts down both directions of the socket behind raw.
func shutdownRaw(raw syscall.RawConn) {
	_ = raw.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RDWR) })
}

// rawFD returns the descriptor behind raw. It stays valid while the
// socket is frozen, because nothing closes a frozen socket.
func rawFD(raw syscall.RawConn) (int, error) {
	fd := -1
	err := raw.Control(func(s uintptr) { fd = int(s) })
	if err != nil {
		return -1, err
	}
	return fd, nil
}

// setUnlink keeps Close of a moved unix listener from removing the socket
// path that the new process now serves.
func setUnlink(ln net.Listener, on bool) {
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(on)
	}
}

var _ = os.Getpid
