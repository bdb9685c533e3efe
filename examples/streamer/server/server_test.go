package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/stream"
	handoff "github.com/handoff-dev/handoff/sdk"
)

// tracked is a connection the server registered with the SDK, as seen
// through the test seam.
type tracked struct {
	c *conn
	h handoff.Hooks
}

type testServer struct {
	addr    string
	tracked chan tracked
	summary chan Summary
	stop    func() Summary
}

// startServer runs Run in the background with no agent (fresh sockets) and
// returns once it listens.
func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	ts := &testServer{tracked: make(chan tracked, 100), summary: make(chan Summary, 1)}
	ready := make(chan Info, 1)
	cfg.Addr = "127.0.0.1:0"
	cfg.Socket = filepath.Join(t.TempDir(), "no-agent.sock")
	cfg.Logf = t.Logf
	cfg.OnReady = func(i Info) { ready <- i }
	cfg.OnExit = func(s Summary) { ts.summary <- s }
	cfg.onTrack = func(c *conn, h handoff.Hooks) {
		select {
		case ts.tracked <- tracked{c, h}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Run(ctx, cfg) }()
	select {
	case i := <-ready:
		ts.addr = i.Addr.String()
		if i.Inherited || i.Imported != 0 {
			t.Errorf("fresh server reports %+v", i)
		}
	case err := <-errc:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	stopped := false
	var sum Summary
	ts.stop = func() Summary {
		if stopped {
			return sum
		}
		stopped = true
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
		sum = <-ts.summary
		return sum
	}
	t.Cleanup(func() { ts.stop() })
	return ts
}

// dial connects; small sets a tiny receive buffer so that the server's
// writes block as soon as the client stops reading.
func dial(t *testing.T, addr string, small bool) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if small {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
			return errors.Join(err, serr)
		}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.TCPConn)
}

// readHeader reads and checks the 200 header.
func readHeader(t *testing.T, r io.Reader) {
	t.Helper()
	h := make([]byte, len(okHeader))
	if _, err := io.ReadFull(r, h); err != nil {
		t.Fatalf("read header: %v", err)
	}
	if string(h) != okHeader {
		t.Fatalf("header = %q, want %q", h, okHeader)
	}
}

// verify reads n body bytes and checks them against the oracle.
func verify(t *testing.T, r io.Reader, v *stream.Verifier, n int64) {
	t.Helper()
	buf := make([]byte, 64<<10)
	for n > 0 {
		m, err := r.Read(buf[:min(int64(len(buf)), n)])
		if err := v.Check(buf[:m]); err != nil {
			t.Fatal(err)
		}
		n -= int64(m)
		if err != nil && n > 0 {
			t.Fatalf("stream %q at offset %d: %v", v.Name(), v.Offset(), err)
		}
	}
}

func TestServeStreams(t *testing.T) {
	ts := startServer(t, Config{Rate: 1 << 20, Tick: 5 * time.Millisecond})
	const n = 8
	done := make(chan error, n)
	for i := range n {
		go func() {
			c, err := net.Dial("tcp", ts.addr)
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			name := "s" + string(rune('a'+i))
			if _, err := io.WriteString(c, "GET /streams/"+name+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				done <- err
				return
			}
			h := make([]byte, len(okHeader))
			if _, err := io.ReadFull(c, h); err != nil || string(h) != okHeader {
				done <- errors.Join(err, errors.New("bad header "+string(h)))
				return
			}
			v := stream.NewVerifier(name, 0)
			buf := make([]byte, 4096)
			for v.Offset() < 100_000 {
				m, err := c.Read(buf)
				if cerr := v.Check(buf[:m]); cerr != nil {
					done <- cerr
					return
				}
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range n {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	sum := ts.stop()
	if sum.Accepted != n || sum.Finished != n || sum.MovedAway || sum.BytesSent < n*100_000 {
		t.Fatalf("summary %+v", sum)
	}
}

func TestPacing(t *testing.T) {
	// 100 KB/s in 10 ms ticks: 1000 bytes per tick, the first at once.
	ts := startServer(t, Config{Rate: 100_000, Tick: 10 * time.Millisecond})
	c := dial(t, ts.addr, false)
	io.WriteString(c, "GET /streams/p HTTP/1.1\r\n\r\n")
	r := bufio.NewReader(c)
	readHeader(t, r)
	start := time.Now()
	verify(t, r, stream.NewVerifier("p", 0), 20_000)
	// 20 chunks need at least 19 ticks after the first, which may have
	// left before start was taken (it can share a read with the header):
	// allow one tick of that. Unpaced, they take microseconds.
	if el := time.Since(start); el < 180*time.Millisecond {
		t.Fatalf("20000 bytes at 100000 B/s arrived in %v: not paced", el)
	}
}

func TestErrorResponses(t *testing.T) {
	ts := startServer(t, Config{})
	cases := []struct{ req, status string }{
		{"GET /nothing HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "},
		{"DELETE /streams/a HTTP/1.1\r\n\r\n", "HTTP/1.1 405 "},
		{"hello\r\n\r\n", "HTTP/1.1 400 "},
		{strings.Repeat("x", maxRequest+10), "HTTP/1.1 400 "},
	}
	for _, tc := range cases {
		c := dial(t, ts.addr, false)
		go io.WriteString(c, tc.req)
		got, err := io.ReadAll(c)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("%.20q: %v", tc.req, err)
		}
		if !strings.HasPrefix(string(got), tc.status) {
			t.Fatalf("%.20q: got %q, want %q...", tc.req, got, tc.status)
		}
	}
	if sum := ts.stop(); sum.Rejected != int64(len(cases)) {
		t.Fatalf("summary %+v, want %d rejected", sum, len(cases))
	}
}

// TestShutdownWithBlockedWriter checks that Run returns although a client
// stopped reading and the server is blocked in Write.
func TestShutdownWithBlockedWriter(t *testing.T) {
	ts := startServer(t, Config{Rate: 80 << 20, Tick: 100 * time.Millisecond})
	c := dial(t, ts.addr, true)
	io.WriteString(c, "GET /streams/b HTTP/1.1\r\n\r\n")
	readHeader(t, c)
	verify(t, c, stream.NewVerifier("b", 0), 1000)
	if sum := ts.stop(); sum.Finished != 1 {
		t.Fatalf("summary %+v", sum)
	}
}

func waitTracked(t *testing.T, ts *testServer) tracked {
	t.Helper()
	select {
	case tr := <-ts.tracked:
		return tr
	case <-time.After(10 * time.Second):
		t.Fatal("no connection tracked")
		return tracked{}
	}
}

// freezeState calls the Freeze hook and decodes what it returned.
func freezeState(t *testing.T, tr tracked) connState {
	t.Helper()
	b, err := tr.h.Freeze()
	if err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	st, err := decodeState(b)
	if err != nil {
		t.Fatalf("Freeze returned an undecodable state: %v", err)
	}
	return st
}

// TestFreezeResumeIdle freezes a connection between ticks, many times.
func TestFreezeResumeIdle(t *testing.T) {
	ts := startServer(t, Config{Rate: 200_000, Tick: 2 * time.Millisecond})
	c := dial(t, ts.addr, false)
	io.WriteString(c, "GET /streams/idle HTTP/1.1\r\n\r\n")
	tr := waitTracked(t, ts)
	r := bufio.NewReader(c)
	readHeader(t, r)
	v := stream.NewVerifier("idle", 0)
	for i := range 50 {
		verify(t, r, v, 500)
		st := freezeState(t, tr)
		if st.Phase != phaseStream || st.Name != "idle" || st.Next < v.Offset() {
			t.Fatalf("freeze %d: state %+v at client offset %d", i, brief(st), v.Offset())
		}
		tr.h.Resume()
	}
	verify(t, r, v, 10_000)
}

// TestFreezeResumeBlockedWrite freezes a connection whose Write is blocked
// because the client stopped reading: the bytes written so far count as
// sent, the rest travel as unsent, and after Resume the client gets every
// byte exactly once.
func TestFreezeResumeBlockedWrite(t *testing.T) {
	ts := startServer(t, Config{Rate: 80 << 20, Tick: 100 * time.Millisecond}) // 8 MiB per tick
	c := dial(t, ts.addr, true)
	io.WriteString(c, "GET /streams/blocked HTTP/1.1\r\n\r\n")
	tr := waitTracked(t, ts)
	readHeader(t, c)
	v := stream.NewVerifier("blocked", 0)
	// The first Write (header and 8 MiB) cannot finish: the client window
	// and the server's send buffer hold far less.
	verify(t, c, v, 1000)
	st := freezeState(t, tr)
	chunk := int64(tr.c.s.chunk)
	if st.Phase != phaseStream || st.Next != chunk || len(st.Unsent) == 0 || int64(len(st.Unsent)) >= chunk {
		t.Fatalf("state %+v (unsent %d): want frozen mid-write of a %d-byte chunk", brief(st), len(st.Unsent), chunk)
	}
	// The unsent bytes are exactly the end of the chunk.
	want := make([]byte, len(st.Unsent))
	stream.Fill("blocked", chunk-int64(len(want)), want)
	if !bytes.Equal(want, st.Unsent) {
		t.Fatal("unsent bytes are not the tail of the chunk")
	}
	tr.h.Resume()
	verify(t, c, v, chunk+100_000)
}

// TestMoveMidWrite freezes a blocked connection, reports it Moved and
// continues it from its state in a second server, as the next process
// would.
func TestMoveMidWrite(t *testing.T) {
	cfg := Config{Rate: 80 << 20, Tick: 100 * time.Millisecond}
	ts := startServer(t, cfg)
	c := dial(t, ts.addr, true)
	io.WriteString(c, "GET /streams/mv HTTP/1.1\r\n\r\n")
	tr := waitTracked(t, ts)
	readHeader(t, c)
	v := stream.NewVerifier("mv", 0)
	verify(t, c, v, 1000)
	st := freezeState(t, tr)
	tr.h.Moved()
	<-tr.c.done
	if _, err := tr.h.Freeze(); !errors.Is(err, handoff.ErrSkip) {
		t.Fatalf("Freeze after Moved = %v, want ErrSkip", err)
	}
	next := newTarget(t, cfg)
	next.start(tr.c.nc, &st)
	verify(t, c, v, int64(next.chunk)+100_000)
	if sum := ts.stop(); sum.Moved != 1 || sum.Finished != 0 {
		t.Fatalf("old server summary %+v, want 1 moved", sum)
	}
	next.shutdown()
	next.drain()
}

// TestMoveMidRequest freezes a connection whose request is half read and
// continues it in a second server.
func TestMoveMidRequest(t *testing.T) {
	cfg := Config{Rate: 100_000, Tick: 10 * time.Millisecond}
	ts := startServer(t, cfg)
	c := dial(t, ts.addr, false)
	const part1, part2 = "GET /streams/half HT", "TP/1.1\r\nHost: x\r\n\r\n"
	io.WriteString(c, part1)
	tr := waitTracked(t, ts)
	// Freeze and resume until the server has read the first part: each
	// round must report a prefix of it.
	deadline := time.Now().Add(10 * time.Second)
	var st connState
	for {
		st = freezeState(t, tr)
		if st.Phase != phaseRequest || !strings.HasPrefix(part1, string(st.Request)) {
			t.Fatalf("state %+v, want a prefix of %q", brief(st), part1)
		}
		if len(st.Request) == len(part1) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server never read the request: %+v", st)
		}
		tr.h.Resume()
	}
	tr.h.Moved()
	<-tr.c.done
	next := newTarget(t, cfg)
	next.start(tr.c.nc, &st)
	io.WriteString(c, part2)
	r := bufio.NewReader(c)
	readHeader(t, r)
	verify(t, r, stream.NewVerifier("half", 0), 5000)
	next.shutdown()
	next.drain()
}

// parked waits until the connection's goroutine waits between ticks.
func parked(t *testing.T, c *conn) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		busy := c.busy
		c.mu.Unlock()
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the connection's goroutine never parked")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestMoveIdle freezes a connection parked between ticks, which takes its
// state without interrupting it, reports it Moved and continues it in a
// second server; a tick while frozen must not send anything.
func TestMoveIdle(t *testing.T) {
	cfg := Config{Rate: 2000, Tick: 20 * time.Millisecond}
	ts := startServer(t, cfg)
	c := dial(t, ts.addr, false)
	io.WriteString(c, "GET /streams/idle-mv HTTP/1.1\r\n\r\n")
	tr := waitTracked(t, ts)
	r := bufio.NewReader(c)
	readHeader(t, r)
	v := stream.NewVerifier("idle-mv", 0)
	verify(t, r, v, 200)
	parked(t, tr.c)
	// The state goes into memory the goroutine prepared as it parked, so
	// that a freeze of thousands of connections allocates nothing.
	tr.c.mu.Lock()
	prepared := tr.c.stateBuf
	tr.c.mu.Unlock()
	if cap(prepared) == 0 {
		t.Fatal("the parked connection has no state buffer ready")
	}
	b, err := tr.h.Freeze()
	if err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	if &b[:1][0] != &prepared[:1][0] {
		t.Fatal("Freeze allocated its state instead of using the prepared buffer")
	}
	st, err := decodeState(b)
	if err != nil {
		t.Fatalf("Freeze returned an undecodable state: %v", err)
	}
	if tr.c.freezing.Load() {
		t.Fatal("a parked connection was frozen by interrupting it")
	}
	if st.Phase != phaseStream || st.Name != "idle-mv" || st.Next < v.Offset() || len(st.Unsent) != 0 {
		t.Fatalf("state %+v at client offset %d", brief(st), v.Offset())
	}
	// Several ticks pass while frozen: the old server must stay silent, or
	// the client would get bytes twice once the next server continues.
	deadline := time.Now().Add(5 * cfg.Tick)
	for time.Now().Before(deadline) {
		tr.c.mu.Lock()
		frozen := tr.c.frozenIdle || tr.c.busy
		tr.c.mu.Unlock()
		if !frozen {
			t.Fatal("the goroutine carried on while frozen")
		}
		time.Sleep(cfg.Tick / 4)
	}
	tr.h.Moved()
	<-tr.c.done
	next := newTarget(t, cfg)
	next.start(tr.c.nc, &st)
	verify(t, r, v, st.Next-v.Offset()+1000)
	if sum := ts.stop(); sum.Moved != 1 || sum.Finished != 0 {
		t.Fatalf("old server summary %+v, want 1 moved", sum)
	}
	next.shutdown()
	next.drain()
}

// TestStopWhileFrozenIdle stops the server while a parked connection is
// frozen: the goroutine must wait for the outcome instead of closing a
// socket that may already belong to the next process.
func TestStopWhileFrozenIdle(t *testing.T) {
	cfg := Config{Rate: 2000, Tick: 20 * time.Millisecond}
	ts := startServer(t, cfg)
	c := dial(t, ts.addr, false)
	io.WriteString(c, "GET /streams/stop HTTP/1.1\r\n\r\n")
	tr := waitTracked(t, ts)
	readHeader(t, c)
	verify(t, c, stream.NewVerifier("stop", 0), 100)
	parked(t, tr.c)
	freezeState(t, tr)
	tr.c.s.shutdown()
	// Ticks and the stop signal reach the goroutine; it must still be
	// waiting for Moved or Resume.
	select {
	case <-tr.c.done:
		t.Fatal("a frozen connection stopped on shutdown without an outcome")
	case <-time.After(5 * cfg.Tick):
	}
	tr.h.Moved()
	<-tr.c.done
	if sum := ts.stop(); sum.Moved != 1 || sum.Finished != 0 {
		t.Fatalf("summary %+v, want 1 moved", sum)
	}
}

// TestFreezeFinished checks ErrSkip for a connection that already ended.
func TestFreezeFinished(t *testing.T) {
	ts := startServer(t, Config{})
	c := dial(t, ts.addr, false)
	io.WriteString(c, "GET /missing HTTP/1.1\r\n\r\n")
	tr := waitTracked(t, ts)
	io.ReadAll(c)
	<-tr.c.done
	if _, err := tr.h.Freeze(); !errors.Is(err, handoff.ErrSkip) {
		t.Fatalf("Freeze = %v, want ErrSkip", err)
	}
}

// TestImportBadState checks that an undecodable state closes that
// connection only.
func TestImportBadState(t *testing.T) {
	s := newTarget(t, Config{})
	a, b := net.Pipe()
	defer b.Close()
	s.importConns([]handoff.Imported{{Conn: a, State: []byte{9, 9}}})
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read from a connection with a bad state: %v, want EOF", err)
	}
	s.shutdown()
	s.drain()
}

// newTarget builds a server that is not listening, standing for the next
// process of a handoff.
func newTarget(t *testing.T, cfg Config) *server {
	t.Helper()
	p, err := handoff.Join(context.Background(), handoff.Options{Socket: filepath.Join(t.TempDir(), "none.sock"), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Tick == 0 {
		cfg.Tick = DefaultTick
	}
	cfg.Logf = t.Logf
	return newServer(cfg, p)
}

// TestMoveKeepsPace checks that a moved connection keeps its pace: its
// state says when the next chunk is due, and the next process sends it
// then, at once if that time has passed, and not before.
func TestMoveKeepsPace(t *testing.T) {
	cfg := Config{Rate: 2000, Tick: 50 * time.Millisecond}
	ts := startServer(t, cfg)
	defer ts.stop()
	// A target whose own tick is an hour: any byte it sends soon comes
	// from the carried due time.
	next := newTarget(t, Config{Rate: 2000, Tick: time.Hour})
	defer func() { next.shutdown(); next.drain() }()

	move := func(name string, due time.Time) (*net.TCPConn, *bufio.Reader, *stream.Verifier, connState) {
		c := dial(t, ts.addr, false)
		io.WriteString(c, "GET /streams/"+name+" HTTP/1.1\r\n\r\n")
		tr := waitTracked(t, ts)
		r := bufio.NewReader(c)
		readHeader(t, r)
		v := stream.NewVerifier(name, 0)
		verify(t, r, v, 100)
		parked(t, tr.c)
		before := time.Now()
		st := freezeState(t, tr)
		if got := time.Unix(0, st.Due); got.Before(before.Add(-cfg.Tick)) || got.After(before.Add(cfg.Tick)) {
			t.Fatalf("%s: state due at %v, want within a tick of %v", name, got, before)
		}
		tr.h.Moved()
		<-tr.c.done
		st.Due = due.UnixNano()
		next.start(tr.c.nc, &st)
		return c, r, v, st
	}

	// Due during the handoff: sent at once, not an hour later.
	c, r, v, st := move("pace-past", time.Now().Add(-time.Second))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	verify(t, r, v, st.Next-v.Offset()+1)

	// Due later: nothing before that time, then the chunk.
	due := time.Now().Add(300 * time.Millisecond)
	c, r, v, st = move("pace-later", due)
	c.SetReadDeadline(due.Add(-20 * time.Millisecond))
	if n, err := r.Read(make([]byte, 1)); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read before the due time: %d bytes, %v; want a timeout", n, err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	verify(t, r, v, st.Next-v.Offset()+1)
}

// echoRound sends request k on an echo connection and checks the reply:
// sequence number seq and the request echoed.
func echoRound(t *testing.T, c net.Conn, r io.Reader, k int, seq uint64) {
	t.Helper()
	req := fmt.Sprintf("req %011d\n", k)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("request %d: %v", k, err)
	}
	got := make([]byte, echoReplyLen)
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("reply %d: %v", k, err)
	}
	if want := fmt.Sprintf("%010d %s", seq, req); string(got) != want {
		t.Fatalf("reply %d = %q, want %q", k, got, want)
	}
}

// TestEcho answers requests in order, a request sent in two pieces too.
func TestEcho(t *testing.T) {
	ts := startServer(t, Config{})
	c := dial(t, ts.addr, false)
	io.WriteString(c, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
	r := bufio.NewReader(c)
	readHeader(t, r)
	for k := range 20 {
		echoRound(t, c, r, k, uint64(k))
	}
	req := fmt.Sprintf("req %011d\n", 20)
	io.WriteString(c, req[:5])
	io.WriteString(c, req[5:])
	got := make([]byte, echoReplyLen)
	if _, err := io.ReadFull(r, got); err != nil || string(got) != "0000000020 "+req {
		t.Fatalf("reply to a request in two pieces: %q, %v", got, err)
	}
	if sum := ts.stop(); sum.Finished != 1 {
		t.Fatalf("summary %+v", sum)
	}
}

// TestMoveEcho freezes an echo connection waiting for the rest of a
// request, moves it to a second server, and checks that the reply to that
// request, and to the next, carry the sequence numbers that follow: no
// request lost or answered twice.
func TestMoveEcho(t *testing.T) {
	ts := startServer(t, Config{})
	c := dial(t, ts.addr, false)
	io.WriteString(c, "GET /echo HTTP/1.1\r\n\r\n")
	tr := waitTracked(t, ts)
	r := bufio.NewReader(c)
	readHeader(t, r)
	for k := range 5 {
		echoRound(t, c, r, k, uint64(k))
	}
	req := fmt.Sprintf("req %011d\n", 5)
	io.WriteString(c, req[:7])
	deadline := time.Now().Add(10 * time.Second)
	var st connState
	for {
		st = freezeState(t, tr)
		if st.Phase != phaseEcho || st.Seq != 5 || len(st.Unsent) != 0 || !strings.HasPrefix(req, string(st.Request)) {
			t.Fatalf("state %+v, want echo at sequence 5 with a prefix of %q read", brief(st), req)
		}
		if len(st.Request) == 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server never read the first piece: %+v", brief(st))
		}
		tr.h.Resume()
	}
	tr.h.Moved()
	<-tr.c.done
	next := newTarget(t, Config{})
	next.start(tr.c.nc, &st)
	io.WriteString(c, req[7:])
	got := make([]byte, echoReplyLen)
	if _, err := io.ReadFull(r, got); err != nil || string(got) != "0000000005 "+req {
		t.Fatalf("reply after the move: %q, %v", got, err)
	}
	echoRound(t, c, r, 6, 6)
	if sum := ts.stop(); sum.Moved != 1 || sum.Finished != 0 {
		t.Fatalf("old server summary %+v, want 1 moved", sum)
	}
	next.shutdown()
	next.drain()
}
