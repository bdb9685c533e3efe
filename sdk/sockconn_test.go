package handoff

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tests of an imported connection on real sockets: it must behave like a
// net.Conn whether it does its I/O directly or through the poller, and
// switch from one to the other without losing or reordering a byte.

// sockPair returns a sockConn over one end of a unix stream socketpair and
// the other end as an ordinary net.Conn. small shrinks both buffers so that
// a write of some tens of KiB has to wait for the reader.
func sockPair(t *testing.T, small bool) (*sockConn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	if small {
		for _, fd := range fds {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4096)
		}
	}
	f := os.NewFile(uintptr(fds[1]), "peer")
	peer, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c := newSockConn(fds[0], "unix")
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c, peer
}

func polled(c *sockConn) bool { return c.f.Load() != nil }

// TestSockConnDirect: reads and writes that need not wait never bring
// in the poller.
func TestSockConnDirect(t *testing.T) {
	c, peer := sockPair(t, false)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("peer read %q, %v", buf, err)
	}
	if _, err := peer.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	// The bytes are in the receive queue once the peer's write returned.
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "world" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if polled(c) {
		t.Fatal("the poller took the descriptor although nothing had to wait")
	}
	if a, ok := c.LocalAddr().(*net.UnixAddr); !ok || a.Net != "unix" {
		t.Fatalf("local address %#v", c.LocalAddr())
	}
}

// TestSockConnReadWaits: a read with nothing to read waits in the
// poller until the peer writes.
func TestSockConnReadWaits(t *testing.T) {
	c, peer := sockPair(t, false)
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(buf[:n])
	}()
	// Write only once the reader is parked in the poller, so that the
	// read cannot have been served directly.
	waitFor(t, "the read to reach the poller", func() bool { return polled(c) })
	if _, err := peer.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "late" {
			t.Fatalf("read %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read did not return after the peer wrote")
	}
}

// TestSockConnWriteWaits: a write larger than the socket buffers writes
// what fits directly, waits in the poller for the rest, and the peer gets
// every byte once, in order.
func TestSockConnWriteWaits(t *testing.T) {
	c, peer := sockPair(t, true)
	want := make([]byte, 1<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	done := make(chan error, 1)
	go func() {
		n, err := c.Write(want)
		if err == nil && n != len(want) {
			err = errors.New("short write")
		}
		done <- err
	}()
	got, err := io.ReadAll(io.LimitReader(peer, int64(len(want))))
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the peer received other bytes than were written")
	}
	if !polled(c) {
		t.Fatal("a write that had to wait did not go through the poller")
	}
}

// TestSockConnConcurrentWrites: each Write arrives whole even when two
// goroutines write at once across the switch to the poller.
func TestSockConnConcurrentWrites(t *testing.T) {
	c, peer := sockPair(t, true)
	const size, each = 64 << 10, 8
	var wg sync.WaitGroup
	for _, b := range []byte{'a', 'b'} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{b}, size)
			for range each {
				if _, err := c.Write(p); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	got, err := io.ReadAll(io.LimitReader(peer, 2*each*size))
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for off := 0; off < len(got); off += size {
		w := got[off : off+size]
		if !bytes.Equal(w, bytes.Repeat(w[:1], size)) {
			t.Fatalf("the write at offset %d is interleaved with another", off)
		}
	}
}

// TestSockConnDeadline: a deadline in the past interrupts a fresh
// connection's read with a timeout, as on a *net.TCPConn.
func TestSockConnDeadline(t *testing.T) {
	c, _ := sockPair(t, false)
	if err := c.SetReadDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after a past deadline: %v, want a timeout", err)
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
}

// TestSockConnClose: after Close every operation reports net.ErrClosed,
// with or without the poller, and Close interrupts a waiting read.
func TestSockConnClose(t *testing.T) {
	t.Run("fresh", func(t *testing.T) {
		c, _ := sockPair(t, false)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		checkClosed(t, c)
	})
	t.Run("waiting read", func(t *testing.T) {
		c, _ := sockPair(t, false)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 1))
			errc <- err
		}()
		waitFor(t, "the read to reach the poller", func() bool { return polled(c) })
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("read interrupted by close: %v, want net.ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("close did not interrupt the read")
		}
		checkClosed(t, c)
	})
	t.Run("released", func(t *testing.T) {
		c, peer := sockPair(t, false)
		fd, ok := c.release()
		if !ok || fd != c.fd {
			t.Fatalf("release = %d, %v; want %d, true", fd, ok, c.fd)
		}
		checkClosed(t, c)
		unix.Close(fd)
		// The peer sees the end of the stream: the descriptor was the
		// only one.
		if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("peer read after release and close: %v, want EOF", err)
		}
	})
}

func checkClosed(t *testing.T, c *sockConn) {
	t.Helper()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
	if err := c.SetDeadline(time.Now()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("set deadline after close: %v", err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second close: %v", err)
	}
	if _, err := c.sysfd(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("export after close: %v", err)
	}
	if _, ok := c.release(); ok {
		t.Error("release after close succeeded")
	}
}

// TestSockConnBlockingDescriptor: a descriptor that arrives blocking (as
// from a process not written in Go) never holds the caller in a system
// call, and is made non-blocking once the poller takes it.
func TestSockConnBlockingDescriptor(t *testing.T) {
	c, peer := sockPair(t, false)
	if err := unix.SetNonblock(c.fd, false); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 4))
		got <- err
	}()
	waitFor(t, "the read to reach the poller", func() bool { return polled(c) })
	fl, err := unix.FcntlInt(uintptr(c.fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Fatalf("flags %#x, %v: the poller has a blocking descriptor", fl, err)
	}
	if _, err := peer.Write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read did not return")
	}
}

// waitFor polls cond, bounded, for something another goroutine does.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
