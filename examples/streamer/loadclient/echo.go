package loadclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The request/response mode of the example server (GET /echo): after the
// response header the client sends requests of EchoRequestLen bytes, and
// the server answers each with the connection's sequence number as ten
// decimal digits, a space, and the request.
const (
	EchoRequestLen      = 16
	EchoReplyLen        = 10 + 1 + EchoRequestLen
	DefaultEchoInterval = 10 * time.Millisecond
)

// echoTimeout bounds one round trip: far beyond any pause, short enough
// that a request the server never answers is reported.
const echoTimeout = 30 * time.Second

// EchoConfig configures an Echo load.
type EchoConfig struct {
	Addr        string                           // server address, host:port
	Clients     int                              // connections, each with one request in flight at a time
	Interval    time.Duration                    // between the starts of two requests on one connection; 0 means DefaultEchoInterval
	DialTimeout time.Duration                    // 0 means DefaultDialTimeout
	Logf        func(format string, args ...any) // failures; nil discards
}

// RoundTrip is one request and its reply: when the request was written
// and when the whole reply was read, on CLOCK_MONOTONIC in nanoseconds,
// the clock every process on the machine shares (see Monotonic).
type RoundTrip struct {
	Sent, Received int64
}

// Duration is the round trip time.
func (r RoundTrip) Duration() time.Duration { return time.Duration(r.Received - r.Sent) }

// Monotonic reads CLOCK_MONOTONIC in nanoseconds.
func Monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// EchoStats counts what an Echo load saw.
type EchoStats struct {
	Clients     int      // connections configured
	Alive       int      // connections healthy (after Stop: healthy until stopped)
	Answered    int64    // requests answered with the right sequence number and the request
	Mismatches  int64    // connections ended by a wrong reply: a request lost, answered twice, or garbled
	Resets      int64    // connections ended by ECONNRESET or EPIPE
	Closed      int64    // connections ended by the server (EOF)
	Errors      int64    // connections ended by any other error, a round trip beyond 30 s among them
	FirstErrors []string // the first few failure messages
}

// Failures describes everything in s that a migration must not cause; it
// is empty for a healthy run.
func (s EchoStats) Failures() []string {
	var f []string
	add := func(n int64, what string) {
		if n > 0 {
			f = append(f, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(s.Mismatches, "echo connections with a wrong reply (lost, repeated or garbled request)")
	add(s.Resets, "echo connections reset")
	add(s.Closed, "echo connections closed by the server")
	add(s.Errors, "echo connections failed with other errors")
	for _, e := range s.FirstErrors {
		f = append(f, "  "+e)
	}
	return f
}

// Echo holds the connections of a request/response load.
type Echo struct {
	cfg    EchoConfig
	ctx    context.Context
	cancel context.CancelFunc
	conns  []*echoConn
	wg     sync.WaitGroup

	stopping atomic.Bool
	stopOnce sync.Once
	final    EchoStats
	trips    []RoundTrip

	mismatches, resets, closed, errs atomic.Int64

	mu        sync.Mutex
	firstErrs []string
}

type echoConn struct {
	nc       net.Conn
	alive    atomic.Bool
	answered atomic.Int64
	trips    []RoundTrip // the connection's goroutine only, until Stop
}

// echoMismatch is a reply that is not the expected one.
type echoMismatch struct {
	client  int
	request int64
	got     string
	want    string
}

func (e *echoMismatch) Error() string {
	return fmt.Sprintf("echo client %d, request %d: reply %q, want %q", e.client, e.request, e.got, e.want)
}

// StartEcho opens cfg.Clients connections and starts their requests,
// spread over the interval. ctx bounds the opening only; the load runs
// until Stop. On error every connection is closed.
func StartEcho(ctx context.Context, cfg EchoConfig) (*Echo, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultEchoInterval
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Clients < 0 {
		return nil, fmt.Errorf("loadclient: invalid echo config: %d clients", cfg.Clients)
	}
	e := &Echo{cfg: cfg, conns: make([]*echoConn, cfg.Clients)}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	d := net.Dialer{Timeout: cfg.DialTimeout}
	for i := range e.conns {
		nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
		if err == nil {
			err = openEcho(nc, cfg.Addr)
			if err != nil {
				nc.Close()
			}
		}
		if err != nil {
			e.closeAll()
			return nil, fmt.Errorf("loadclient: open echo connection %d to %s: %w", i, cfg.Addr, err)
		}
		e.conns[i] = &echoConn{nc: nc}
		e.conns[i].alive.Store(true)
	}
	for i, c := range e.conns {
		e.wg.Add(1)
		go e.run(i, c, time.Duration(i)*cfg.Interval/time.Duration(max(cfg.Clients, 1)))
	}
	return e, nil
}

// openEcho sends the request for the echo mode and reads the header.
func openEcho(nc net.Conn, addr string) error {
	_ = nc.SetDeadline(time.Now().Add(openTimeout))
	defer nc.SetDeadline(time.Time{})
	if _, err := io.WriteString(nc, "GET /echo HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	h := make([]byte, len(ResponseHeader))
	if _, err := io.ReadFull(nc, h); err != nil {
		return fmt.Errorf("read header: %w", err)
	}
	if string(h) != ResponseHeader {
		return fmt.Errorf("bad response header %q", h)
	}
	return nil
}

func (e *Echo) closeAll() {
	for _, c := range e.conns {
		if c != nil {
			c.nc.Close()
		}
	}
}

// run sends a request every interval, after offset, and checks each reply.
func (e *Echo) run(i int, c *echoConn, offset time.Duration) {
	defer e.wg.Done()
	select {
	case <-time.After(offset): // spreads the clients' requests over the interval
	case <-e.ctx.Done():
		return
	}
	t := time.NewTicker(e.cfg.Interval)
	defer t.Stop()
	var req [EchoRequestLen]byte
	var reply, want [EchoReplyLen]byte
	for k := int64(0); ; k++ {
		copy(req[:], "req ")
		putDigits(req[4:15], k)
		req[15] = '\n'
		putDigits(want[:10], k)
		want[10] = ' '
		copy(want[11:], req[:])
		_ = c.nc.SetDeadline(time.Now().Add(echoTimeout))
		sent := Monotonic()
		_, err := c.nc.Write(req[:])
		if err == nil {
			_, err = io.ReadFull(c.nc, reply[:])
		}
		recv := Monotonic()
		if err == nil && reply != want {
			err = &echoMismatch{client: i, request: k, got: string(reply[:]), want: string(want[:])}
		}
		if err != nil {
			var me *echoMismatch
			if e.stopping.Load() && !errors.As(err, &me) {
				return
			}
			c.alive.Store(false)
			e.fail(i, k, err)
			return
		}
		c.trips = append(c.trips, RoundTrip{Sent: sent, Received: recv})
		c.answered.Add(1)
		select {
		case <-t.C:
		case <-e.ctx.Done():
			return
		}
	}
}

// putDigits writes the last len(b) decimal digits of v into b.
func putDigits(b []byte, v int64) {
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
}

// fail counts the failure that ended a connection.
func (e *Echo) fail(i int, k int64, err error) {
	var me *echoMismatch
	switch {
	case errors.As(err, &me):
		e.mismatches.Add(1)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		e.closed.Add(1)
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		e.resets.Add(1)
	default:
		e.errs.Add(1)
	}
	if me == nil {
		err = fmt.Errorf("echo client %d, request %d: %w", i, k, err)
	}
	e.cfg.Logf("loadclient: %v", err)
	e.mu.Lock()
	if len(e.firstErrs) < maxErrors {
		e.firstErrs = append(e.firstErrs, err.Error())
	}
	e.mu.Unlock()
}

// Snapshot returns the counters so far.
func (e *Echo) Snapshot() EchoStats {
	st := EchoStats{
		Clients:    len(e.conns),
		Mismatches: e.mismatches.Load(),
		Resets:     e.resets.Load(),
		Closed:     e.closed.Load(),
		Errors:     e.errs.Load(),
	}
	for _, c := range e.conns {
		if c.alive.Load() {
			st.Alive++
		}
		st.Answered += c.answered.Load()
	}
	e.mu.Lock()
	st.FirstErrors = append([]string(nil), e.firstErrs...)
	e.mu.Unlock()
	return st
}

// Stop closes every connection, waits for the goroutines and returns the
// final counters and every round trip, in no particular order.
// Connections healthy until Stop count as Alive. Calling it again returns
// the same.
func (e *Echo) Stop() (EchoStats, []RoundTrip) {
	e.stopOnce.Do(func() {
		e.stopping.Store(true)
		e.cancel()
		e.closeAll()
		e.wg.Wait()
		e.final = e.Snapshot()
		for _, c := range e.conns {
			e.trips = append(e.trips, c.trips...)
		}
	})
	return e.final, e.trips
}

// String formats s on one line.
func (s EchoStats) String() string {
	return "echo clients=" + strconv.Itoa(s.Clients) + " alive=" + strconv.Itoa(s.Alive) +
		fmt.Sprintf(" answered=%d mismatches=%d resets=%d closed=%d errors=%d", s.Answered, s.Mismatches, s.Resets, s.Closed, s.Errors)
}
