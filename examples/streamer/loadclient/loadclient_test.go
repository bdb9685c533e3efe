package loadclient

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/server"
	"github.com/handoff-dev/handoff/examples/streamer/stream"
)

// startStreamer runs the example server in-process on 127.0.0.1:0.
func startStreamer(t *testing.T, rate int, tick time.Duration) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- server.Run(ctx, server.Config{
			Addr: "127.0.0.1:0", Rate: rate, Tick: tick,
			Socket:  filepath.Join(t.TempDir(), "no-agent.sock"),
			Logf:    t.Logf,
			OnReady: func(i server.Info) { ready <- i.Addr },
		})
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-errc:
		cancel()
		t.Fatalf("streamer: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("streamer: %v", err)
		}
	})
	return addr.String()
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestAgainstStreamer(t *testing.T) {
	addr := startStreamer(t, 100_000, 10*time.Millisecond)
	c, err := Start(ctxTimeout(t, 10*time.Second), Config{
		Addr: addr, Streams: 50, NamePrefix: "t-", NewConnRate: 200, ShortBytes: 3000, Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	m := c.Mark()
	c.ResetStall()
	if err := c.WaitAdvanced(ctxTimeout(t, 10*time.Second), m, 5000); err != nil {
		t.Fatal(err)
	}
	// Wait for a few short connections too.
	for deadline := time.Now().Add(10 * time.Second); c.Snapshot().ShortOK < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("no short connections completed: %v", c.Snapshot())
		}
		m = c.Mark()
		if err := c.WaitAdvanced(ctxTimeout(t, 10*time.Second), m, 1); err != nil {
			t.Fatal(err)
		}
	}
	st := c.Stop()
	t.Logf("stats: %v", st)
	if f := st.Failures(); len(f) != 0 {
		t.Fatalf("failures: %q", f)
	}
	if st.Streams != 50 || st.Alive != 50 || st.BytesVerified < 50*5000 || st.ShortOK < 3 {
		t.Fatalf("stats %v", st)
	}
	if st.LongestStall <= 0 || st.LongestStall > 5*time.Second {
		t.Fatalf("longest stall %v", st.LongestStall)
	}
	if again := c.Stop(); again.BytesVerified != st.BytesVerified {
		t.Fatal("second Stop changed the stats")
	}
}

// fakeServer serves each request with respond(name, conn) after reading the
// request header.
func fakeServer(t *testing.T, respond func(name string, c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				respond(strings.TrimPrefix(req.URL.Path, "/streams/"), c)
			}()
		}
	}()
	return ln.Addr().String()
}

// body returns n correct bytes of stream name.
func body(name string, n int) []byte {
	b := make([]byte, n)
	stream.Fill(name, 0, b)
	return b
}

func waitFailed(t *testing.T, c *Client) Stats {
	t.Helper()
	select {
	case <-c.Failed():
	case <-time.After(10 * time.Second):
		t.Fatalf("no failure detected: %v", c.Snapshot())
	}
	return c.Stop()
}

func TestDetectsCorruption(t *testing.T) {
	addr := fakeServer(t, func(name string, c net.Conn) {
		b := body(name, 10000)
		if name == "x-3" {
			b[7777] ^= 0x40
		}
		io.WriteString(c, ResponseHeader)
		c.Write(b[:100])
		c.Write(b[100:])
		io.Copy(io.Discard, c) // keep the stream open
	})
	c, err := Start(ctxTimeout(t, 10*time.Second), Config{Addr: addr, Streams: 5, NamePrefix: "x-"})
	if err != nil {
		t.Fatal(err)
	}
	st := waitFailed(t, c)
	if st.Mismatches != 1 || st.Alive != 4 || len(st.FirstErrors) != 1 ||
		!strings.Contains(st.FirstErrors[0], `"x-3"`) || !strings.Contains(st.FirstErrors[0], "offset 7777") {
		t.Fatalf("stats %v, errors %q", st, st.FirstErrors)
	}
	if len(st.Failures()) == 0 {
		t.Fatal("Failures() empty despite a mismatch")
	}
}

func TestDetectsDuplicate(t *testing.T) {
	addr := fakeServer(t, func(name string, c net.Conn) {
		b := body(name, 8192)
		io.WriteString(c, ResponseHeader)
		c.Write(b[:5000]) // past the first read (4 KiB buffer)
		c.Write(b[4950:]) // 50 bytes sent twice
		io.Copy(io.Discard, c)
	})
	c, err := Start(ctxTimeout(t, 10*time.Second), Config{Addr: addr, Streams: 1})
	if err != nil {
		t.Fatal(err)
	}
	if st := waitFailed(t, c); st.Mismatches != 1 || !strings.Contains(st.FirstErrors[0], "offset 5000") {
		t.Fatalf("stats %v", st)
	}
}

func TestDetectsClosedStream(t *testing.T) {
	addr := fakeServer(t, func(name string, c net.Conn) {
		io.WriteString(c, ResponseHeader)
		c.Write(body(name, 500))
		// returning closes the connection: a stream must never end
	})
	c, err := Start(ctxTimeout(t, 10*time.Second), Config{Addr: addr, Streams: 3})
	if err != nil {
		t.Fatal(err)
	}
	// Wait until all three have ended.
	for st := c.Snapshot(); st.Closed < 3; st = c.Snapshot() {
		select {
		case <-c.Failed():
		case <-time.After(10 * time.Second):
			t.Fatalf("stats %v", st)
		}
		m := c.Mark()
		_ = c.WaitAdvanced(ctxTimeout(t, 10*time.Second), m, 1) // returns once no stream is alive
	}
	st := c.Stop()
	if st.Closed != 3 || st.Alive != 0 || st.Mismatches != 0 || st.BytesVerified != 1500 {
		t.Fatalf("stats %v", st)
	}
}

func TestDetectsBadHeader(t *testing.T) {
	addr := fakeServer(t, func(name string, c net.Conn) {
		io.WriteString(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
	})
	_, err := Start(ctxTimeout(t, 10*time.Second), Config{Addr: addr, Streams: 2})
	if err == nil || !strings.Contains(err.Error(), "bad response header") {
		t.Fatalf("Start = %v, want a bad header error", err)
	}
}

func TestShortConnectionFailures(t *testing.T) {
	addr := fakeServer(t, func(name string, c net.Conn) {
		io.WriteString(c, ResponseHeader)
		b := body(name, 2000)
		if strings.Contains(name, "short") {
			b[10] ^= 1
		}
		c.Write(b)
		io.Copy(io.Discard, c)
	})
	c, err := Start(ctxTimeout(t, 10*time.Second), Config{Addr: addr, Streams: 1, NewConnRate: 100, ShortBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	st := waitFailed(t, c)
	if st.ShortFailed == 0 || st.Mismatches == 0 || st.ShortOK != 0 || st.Alive != 1 {
		t.Fatalf("stats %v", st)
	}
}

func TestStartFailsWithoutServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Start(ctxTimeout(t, 10*time.Second), Config{Addr: addr, Streams: 3})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Start = %v, want a dial error", err)
	}
}

func TestWaitAdvancedTimesOut(t *testing.T) {
	addr := fakeServer(t, func(name string, c net.Conn) {
		io.WriteString(c, ResponseHeader)
		c.Write(body(name, 100))
		io.Copy(io.Discard, c) // then silence
	})
	c, err := Start(ctxTimeout(t, 10*time.Second), Config{Addr: addr, Streams: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.WaitAdvanced(ctx, c.Mark(), 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitAdvanced = %v, want DeadlineExceeded", err)
	}
	// The silence is an open stall.
	if st := c.Snapshot(); st.LongestStall < 40*time.Millisecond || len(st.Failures()) != 0 {
		t.Fatalf("stats %v", st)
	}
}
