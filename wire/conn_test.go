package wire

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSendRecv(t *testing.T) {
	a, b := socketPair(t)
	a.SetVersion(1)
	body := Failure{Code: CodeRefused, Reason: "no"}.Marshal()
	if err := a.Send(Msg{Header: Header{Type: TypeError, TxID: 42, Seq: 3, Flags: 5}, Body: body}); err != nil {
		t.Fatal(err)
	}
	m, err := recvBounded(t, b)
	if err != nil {
		t.Fatal(err)
	}
	want := Header{Version: 1, Type: TypeError, Flags: 5, TxID: 42, Seq: 3, BodyLen: uint32(len(body))}
	if m.Header != want || !bytes.Equal(m.Body, body) || len(m.FDs) != 0 {
		t.Fatalf("got %+v %q %v, want %+v %q", m.Header, m.Body, m.FDs, want, body)
	}
	// Empty body and a body of exactly MaxBody.
	for _, n := range []int{0, MaxBody} {
		big := bytes.Repeat([]byte{0xab}, n)
		if err := a.Send(Msg{Header: Header{Type: TypeResponse}, Body: big}); err != nil {
			t.Fatalf("send %d bytes: %v", n, err)
		}
		m, err := recvBounded(t, b)
		if err != nil || !bytes.Equal(m.Body, big) {
			t.Fatalf("receive %d bytes: %d bytes, %v", n, len(m.Body), err)
		}
	}
}

// Send sets Version, NFDs and BodyLen itself; what the caller put there is
// ignored.
func TestSendFillsHeader(t *testing.T) {
	a, b := socketPair(t)
	if err := a.Send(Msg{Header: Header{Version: 9, Type: TypeCommit, NFDs: 7, BodyLen: 100}}); err != nil {
		t.Fatal(err)
	}
	m, err := recvBounded(t, b)
	if err != nil || m.Version != MinVersion || m.NFDs != 0 || m.BodyLen != 0 {
		t.Fatalf("got %+v, %v", m.Header, err)
	}
	if a.Version() != MinVersion {
		t.Fatalf("a new Conn speaks version %d, want %d", a.Version(), MinVersion)
	}
}

func TestRecvAfterPeerClosed(t *testing.T) {
	a, b := socketPair(t)
	if err := a.Send(Msg{Header: Header{Type: TypeCommit}}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	// What was queued before the close is still delivered, then EOF.
	if m, err := recvBounded(t, b); err != nil || m.Type != TypeCommit {
		t.Fatalf("queued message: %v, %v", m.Type, err)
	}
	if _, err := recvBounded(t, b); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v, want ErrClosed", err)
	}
	if err := b.Send(Msg{Header: Header{Type: TypeCommit}}); err == nil {
		t.Fatal("send to a closed peer succeeded")
	}
}

// A zero-length datagram reads like the peer closing: the protocol never
// sends one.
func TestZeroLengthDatagramIsClose(t *testing.T) {
	a, b := socketPair(t)
	rawSend(t, a, nil, nil)
	if _, err := recvBounded(t, b); !errors.Is(err, ErrClosed) {
		t.Fatalf("zero-length datagram: %v, want ErrClosed", err)
	}
}

func TestPassFDs(t *testing.T) {
	for _, n := range []int{1, 2, 252, MaxFDs} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			a, b := socketPair(t)
			sent := pipes(t, n)
			inos := make([]uint64, n)
			for i, fd := range sent {
				inos[i] = inode(t, fd)
			}
			if err := a.Send(Msg{Header: Header{Type: TypeBatch, TxID: 1}, Body: []byte("x"), FDs: sent}); err != nil {
				t.Fatal(err)
			}
			CloseAll(sent)
			base := fdCount(t)
			m, err := recvBounded(t, b)
			if err != nil {
				t.Fatal(err)
			}
			if len(m.FDs) != n || int(m.NFDs) != n {
				t.Fatalf("received %d descriptors (header %d), want %d", len(m.FDs), m.NFDs, n)
			}
			assertFDs(t, base+n, "after receiving")
			for i, fd := range m.FDs {
				if got := inode(t, fd); got != inos[i] {
					t.Fatalf("descriptor %d is inode %d, sent %d: order not kept", i, got, inos[i])
				}
				flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
				if err != nil || flags&unix.FD_CLOEXEC == 0 {
					t.Fatalf("received descriptor %d lacks FD_CLOEXEC (flags %#x, %v)", fd, flags, err)
				}
			}
			m.CloseFDs()
			if m.FDs != nil {
				t.Fatal("CloseFDs kept the slice")
			}
			assertFDs(t, base, "after CloseFDs")
		})
	}
}

func TestSendRefusesTooMuch(t *testing.T) {
	a, b := socketPair(t)
	fds := pipes(t, MaxFDs+1)
	defer CloseAll(fds)
	base := fdCount(t)
	err := a.Send(Msg{Header: Header{Type: TypeBatch}, FDs: fds})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "254 descriptors, limit 253") {
		t.Fatalf("send of 254 descriptors: %v", err)
	}
	err = a.Send(Msg{Header: Header{Type: TypeResponse}, Body: make([]byte, MaxBody+1)})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("send of MaxBody+1: %v", err)
	}
	// Nothing was queued by the refused sends: the next message is the
	// first to arrive.
	if err := a.Send(Msg{Header: Header{Type: TypeCommit, TxID: 77}}); err != nil {
		t.Fatal(err)
	}
	m, err := recvBounded(t, b)
	if err != nil || m.Type != TypeCommit || m.TxID != 77 || len(m.FDs) != 0 {
		t.Fatalf("after refused sends got %v txid %d with %d fds, %v", m.Type, m.TxID, len(m.FDs), err)
	}
	assertFDs(t, base, "after refused sends")
}

// The kernel itself refuses more than SCM_MAX_FD descriptors in one
// sendmsg, so a receiver never sees more than MaxFDs.
func TestKernelRefusesMoreThanMaxFDs(t *testing.T) {
	a, _ := socketPair(t)
	fds := pipes(t, MaxFDs+1)
	defer CloseAll(fds)
	hdr := rawHeader(1, TypeBatch, 0, 1, 0, MaxFDs+1, 0)
	_, _, err := a.Unix().WriteMsgUnix(hdr, unix.UnixRights(fds...), nil)
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("sendmsg with 254 descriptors: %v, want EINVAL", err)
	}
}

func TestRecvRejectsAndCloses(t *testing.T) {
	cases := []struct {
		name  string
		nfds  int
		build func(fds []int) (b, oob []byte)
		want  error
	}{
		{"more fds in cmsg than announced", 3, func(fds []int) ([]byte, []byte) {
			return rawHeader(1, TypeBatch, 0, 1, 0, 1, 0), unix.UnixRights(fds...)
		}, ErrFDCount},
		{"fewer fds than announced", 2, func(fds []int) ([]byte, []byte) {
			return rawHeader(1, TypeBatch, 0, 1, 0, 5, 0), unix.UnixRights(fds...)
		}, ErrFDCount},
		{"fds on a message announcing none", 1, func(fds []int) ([]byte, []byte) {
			return rawHeader(1, TypeCommit, 0, 1, 0, 0, 0), unix.UnixRights(fds...)
		}, ErrFDCount},
		{"two rights messages, more than announced", 4, func(fds []int) ([]byte, []byte) {
			return rawHeader(1, TypeBatch, 0, 1, 0, 2, 0), append(unix.UnixRights(fds[:2]...), unix.UnixRights(fds[2:]...)...)
		}, ErrFDCount},
		{"bad magic with fds", 2, func(fds []int) ([]byte, []byte) {
			return []byte("garbage that is not a header at all"), unix.UnixRights(fds...)
		}, ErrMagic},
		{"short datagram with fds", 2, func(fds []int) ([]byte, []byte) {
			return []byte("HOFF"), unix.UnixRights(fds...)
		}, ErrShort},
		{"unknown type with fds", 1, func(fds []int) ([]byte, []byte) {
			return rawHeader(1, 99, 0, 1, 0, 1, 0), unix.UnixRights(fds...)
		}, ErrType},
		{"unknown version with fds", 1, func(fds []int) ([]byte, []byte) {
			return rawHeader(MaxVersion+1, TypeBatch, 0, 1, 0, 1, 0), unix.UnixRights(fds...)
		}, ErrVersion},
		{"body length mismatch with fds", 1, func(fds []int) ([]byte, []byte) {
			return append(rawHeader(1, TypeBatch, 0, 1, 0, 1, 10), 1, 2, 3), unix.UnixRights(fds...)
		}, ErrBodyLen},
		{"datagram of MaxMessage+1 with fds", 3, func(fds []int) ([]byte, []byte) {
			return append(rawHeader(1, TypeBatch, 0, 1, 0, 3, MaxBody+1), make([]byte, MaxBody+1)...), unix.UnixRights(fds...)
		}, ErrTruncated},
		{"datagram far beyond MaxMessage with fds", MaxFDs, func(fds []int) ([]byte, []byte) {
			return append(rawHeader(1, TypeBatch, 0, 1, 0, MaxFDs, 2*MaxBody), make([]byte, 2*MaxBody)...), unix.UnixRights(fds...)
		}, ErrTruncated},
		{"zero-length datagram with fds", 2, func(fds []int) ([]byte, []byte) {
			return nil, unix.UnixRights(fds...)
		}, ErrShort},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := socketPair(t)
			fds := pipes(t, tc.nfds)
			msg, oob := tc.build(fds)
			rawSend(t, a, msg, oob)
			CloseAll(fds)
			base := fdCount(t)
			m, err := recvBounded(t, b)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Recv: %+v, %v; want %v", m.Header, err, tc.want)
			}
			if m.FDs != nil || m.Body != nil {
				t.Fatalf("Recv returned a message alongside %v", err)
			}
			assertFDs(t, base, "after the refused message")
			// The connection still works.
			if err := a.Send(Msg{Header: Header{Type: TypeCommit}}); err != nil {
				t.Fatal(err)
			}
			if m, err := recvBounded(t, b); err != nil || m.Type != TypeCommit {
				t.Fatalf("next message: %v, %v", m.Type, err)
			}
		})
	}
}

// A receiver that enabled SO_PASSCRED gets SCM_CREDENTIALS next to the
// rights: Recv refuses the message and closes the descriptors.
func TestRecvUnexpectedControlMessage(t *testing.T) {
	a, b := socketPair(t)
	raw, err := b.Unix().SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if serr != nil {
		t.Fatal(serr)
	}
	fds := pipes(t, 3)
	if err := a.Send(Msg{Header: Header{Type: TypeBatch}, FDs: fds}); err != nil {
		t.Fatal(err)
	}
	CloseAll(fds)
	base := fdCount(t)
	if _, err := recvBounded(t, b); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "unexpected control message") {
		t.Fatalf("Recv with SCM_CREDENTIALS: %v, want ErrMalformed", err)
	}
	assertFDs(t, base, "after the refused message")
}

// At RLIMIT_NOFILE the kernel installs what it can, drops the rest and
// sets MSG_CTRUNC: Recv reports ErrTruncated and closes what was installed.
func TestRecvAtFileLimit(t *testing.T) {
	for _, free := range []int{0, 2} {
		t.Run("free slots "+strconv.Itoa(free), func(t *testing.T) {
			a, b := socketPair(t)
			sent := pipes(t, 5)
			if err := a.Send(Msg{Header: Header{Type: TypeBatch, TxID: 3}, Body: []byte("state"), FDs: sent}); err != nil {
				t.Fatal(err)
			}
			CloseAll(sent)
			base := fdCount(t)

			// Fill every hole below the highest descriptor, so the free slots
			// under the new limit are exactly those we leave.
			devnull, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fillers := []int{devnull}
			defer func() { CloseAll(fillers) }()
			top := maxFD(t)
			for {
				fd, err := unix.FcntlInt(uintptr(devnull), unix.F_DUPFD_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				if fd > top {
					unix.Close(fd)
					break
				}
				fillers = append(fillers, fd)
			}
			var lim syscall.Rlimit
			if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
				t.Fatal(err)
			}
			low := lim
			low.Cur = uint64(top + 1 + free)
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
				t.Fatal(err)
			}
			restored := false
			restore := func() {
				if !restored {
					restored = true
					if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
						t.Errorf("restore RLIMIT_NOFILE: %v", err)
					}
				}
			}
			defer restore()
			_, rerr := b.Recv() // no deadline: setting one needs no descriptor, but keep this window minimal
			restore()
			if !errors.Is(rerr, ErrTruncated) {
				t.Fatalf("Recv at the file limit: %v, want ErrTruncated", rerr)
			}
			if !strings.Contains(rerr.Error(), "0 descriptors kept") && free == 0 {
				t.Errorf("error %q", rerr)
			}
			if free > 0 && !strings.Contains(rerr.Error(), strconv.Itoa(free)+" descriptors kept") {
				t.Errorf("error %q does not report the %d descriptors the kernel installed", rerr, free)
			}
			CloseAll(fillers)
			fillers = nil
			assertFDs(t, base, "after the truncated message")
			// The connection still works.
			if err := a.Send(Msg{Header: Header{Type: TypeCommit}}); err != nil {
				t.Fatal(err)
			}
			if m, err := recvBounded(t, b); err != nil || m.Type != TypeCommit {
				t.Fatalf("next message: %v, %v", m.Type, err)
			}
		})
	}
}

func maxFD(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	top := 0
	for _, e := range ents {
		n := 0
		for _, c := range e.Name() {
			n = n*10 + int(c-'0')
		}
		top = max(top, n)
	}
	return top
}

func TestConcurrentSend(t *testing.T) {
	a, b := socketPair(t)
	const senders, each = 8, 50
	var wg sync.WaitGroup
	for i := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				body := bytes.Repeat([]byte{byte(i)}, 100+j)
				if err := a.Send(Msg{Header: Header{Type: TypeProgress, TxID: uint64(i)}, Body: body}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for range senders * each {
		m, err := recvBounded(t, b)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range m.Body {
			if c != byte(m.TxID) {
				t.Fatalf("message from sender %d carries byte %d: interleaved writes", m.TxID, c)
			}
		}
	}
	<-done
}

func TestPairAndFromFD(t *testing.T) {
	base := fdCount(t)
	pa, pb, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range []int{pa, pb} {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Fatalf("pair descriptor lacks FD_CLOEXEC")
		}
	}
	ca, err := FromFD(pa, "a")
	if err != nil {
		t.Fatal(err)
	}
	cb, err := FromFD(pb, "b")
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Send(Msg{Header: Header{Type: TypeReady, TxID: 5}, Body: Summary{Conns: 2}.Marshal()}); err != nil {
		t.Fatal(err)
	}
	if m, err := recvBounded(t, cb); err != nil || m.Type != TypeReady || m.TxID != 5 {
		t.Fatalf("over the pair: %v, %v", m.Type, err)
	}
	ca.Close()
	cb.Close()
	// netpoll may have opened its own descriptors on first use.
	if got := fdCount(t); got > base+2 {
		t.Fatalf("%d descriptors after closing the pair, had %d", got, base)
	}
}

func TestFromFDRefusesAndConsumes(t *testing.T) {
	// Warm up netpoll so its descriptors are in the baseline.
	socketPair(t)
	base := fdCount(t)
	p := pipes(t, 1)
	if _, err := FromFD(p[0], "pipe"); err == nil || !strings.Contains(err.Error(), "adopt pipe descriptor") {
		t.Fatalf("FromFD of a pipe: %v", err)
	}
	assertFDs(t, base, "after FromFD of a pipe")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	base = fdCount(t)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.(*net.TCPConn).File()
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FromFD(fd, "tcp"); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "not a unix socket") {
		t.Fatalf("FromFD of a tcp socket: %v", err)
	}
	assertFDs(t, base, "after FromFD of a tcp socket")
}

func TestDialAndListen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	if _, err := Dial(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("dial of a missing socket: %v", err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	uc, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	s := NewConn(uc)
	defer s.Close()
	hello := Hello{MinVersion: MinVersion, MaxVersion: MaxVersion, Role: RoleApp, Name: "dialer"}
	if err := c.Send(Msg{Header: Header{Type: TypeHello}, Body: hello.Marshal()}); err != nil {
		t.Fatal(err)
	}
	m, err := recvBounded(t, s)
	if err != nil {
		t.Fatal(err)
	}
	var h Hello
	if err := h.Unmarshal(m.Body); err != nil || h != hello {
		t.Fatalf("hello over a listener: %+v, %v", h, err)
	}
	v, err := Negotiate(h.MinVersion, h.MaxVersion)
	if err != nil {
		t.Fatal(err)
	}
	s.SetVersion(v)
	if err := s.Send(Msg{Header: Header{Type: TypeWelcome}, Body: Welcome{Version: uint16(v), SessionID: 1}.Marshal()}); err != nil {
		t.Fatal(err)
	}
	if m, err := recvBounded(t, c); err != nil || m.Type != TypeWelcome || m.Version != v {
		t.Fatalf("welcome: %+v, %v", m.Header, err)
	}
}
