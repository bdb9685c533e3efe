// Package loadclient is a verifying load client for the example streaming
// server (examples/streamer): it holds many long-lived streams and opens
// short connections at a steady rate, checks every byte it receives
// against the stream oracle (examples/streamer/stream), and counts everything a
// migration must not cause: resets, closed streams, lost or duplicated
// bytes, failed short connections, and long stalls.
//
// A stream ends at its first failure, so a failure is counted once per
// stream and can never be hidden by the bytes that follow it.
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

	"github.com/handoff-dev/handoff/examples/streamer/stream"
)

// ResponseHeader is the exact header the server sends before a stream body.
const ResponseHeader = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"

// Defaults for Config.
const (
	DefaultNamePrefix  = "load-"
	DefaultShortBytes  = 1024
	DefaultDialTimeout = 10 * time.Second
)

const (
	openConcurrency = 64               // streams being opened at once
	openTimeout     = 30 * time.Second // from dial to the first verified body bytes
	shortTimeout    = 30 * time.Second // for a whole short connection
	maxShortFlight  = 1024             // short connections in flight at once
	maxErrors       = 10               // failure messages kept
	readBufSize     = 4096             // per stream
)

// Config configures a Client.
type Config struct {
	Addr        string                           // server address, host:port
	Streams     int                              // long-lived streams to hold open
	NamePrefix  string                           // stream i is NamePrefix+strconv.Itoa(i); "" means DefaultNamePrefix
	NewConnRate float64                          // short connections per second; 0 for none
	ShortBytes  int                              // body bytes each short connection reads and verifies; 0 means DefaultShortBytes
	DialTimeout time.Duration                    // 0 means DefaultDialTimeout
	Logf        func(format string, args ...any) // progress and failures; nil discards
}

// Stats is a snapshot of a Client's counters.
type Stats struct {
	Streams       int           // long-lived streams configured
	Alive         int           // streams open and healthy (after Stop: healthy until stopped)
	Resets        int64         // streams ended by ECONNRESET or EPIPE
	Closed        int64         // streams ended by the server (EOF): a stream never ends
	Mismatches    int64         // streams or short connections whose bytes did not match the oracle (lost, duplicated or corrupted data, or a wrong header)
	Errors        int64         // streams ended by any other error
	BytesVerified int64         // body bytes checked against the oracle, short connections included
	ShortOK       int64         // short connections that verified ShortBytes bytes
	ShortFailed   int64         // short connections that failed in any way
	LongestStall  time.Duration // longest gap between two reads on one stream, since Start or ResetStall, including gaps still open
	FirstErrors   []string      // the first few failure messages
}

// Failures describes everything in s that a migration must not cause; it
// is empty for a healthy run.
func (s Stats) Failures() []string {
	var f []string
	add := func(n int64, what string) {
		if n > 0 {
			f = append(f, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(s.Mismatches, "mismatches (lost, duplicated or corrupted bytes)")
	add(s.Resets, "streams reset")
	add(s.Closed, "streams closed by the server")
	add(s.Errors, "streams failed with other errors")
	add(s.ShortFailed, "short connections failed")
	if lost := int64(s.Streams-s.Alive) - s.Resets - s.Closed - s.Mismatches - s.Errors; lost > 0 {
		// Cannot happen: every stream that ends is counted above. Kept so
		// that a bug here cannot hide a dead stream.
		add(lost, "streams not alive for no recorded reason")
	}
	for _, e := range s.FirstErrors {
		f = append(f, "  "+e)
	}
	return f
}

// String formats s on one line.
func (s Stats) String() string {
	return fmt.Sprintf("streams=%d alive=%d verified=%s mismatches=%d resets=%d closed=%d errors=%d short_ok=%d short_failed=%d longest_stall=%v",
		s.Streams, s.Alive, FormatBytes(s.BytesVerified), s.Mismatches, s.Resets, s.Closed, s.Errors,
		s.ShortOK, s.ShortFailed, s.LongestStall.Round(time.Millisecond))
}

// FormatBytes formats n with a binary unit.
func FormatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 2, 64) + "GiB"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 2, 64) + "MiB"
	case n >= 1<<10:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + "KiB"
	}
	return strconv.FormatInt(n, 10) + "B"
}

// Mark records how many bytes each stream had received; see WaitAdvanced.
type Mark struct {
	bytes []int64
}

// Client holds the streams and short connections of one load run.
type Client struct {
	cfg     Config
	start   time.Time
	ctx     context.Context // canceled by Stop
	cancel  context.CancelFunc
	dialer  net.Dialer
	streams []*streamConn
	wg      sync.WaitGroup

	stopping atomic.Bool // Stop began: connection errors are no longer failures
	stopOnce sync.Once
	stopped  atomic.Bool // final is set
	final    Stats

	resetAt atomic.Int64 // ns since start: stalls are measured from here

	resets, closed, mismatches, errs atomic.Int64
	shortBytes, shortOK, shortFailed atomic.Int64

	mu         sync.Mutex
	firstErrs  []string
	failed     chan struct{} // closed at the first failure
	failedOnce sync.Once

	waitMu  sync.Mutex
	waiters map[chan struct{}]struct{}
	nwait   atomic.Int32
}

// streamConn is one long-lived stream.
type streamConn struct {
	name  string
	conn  atomic.Pointer[net.Conn]
	bytes atomic.Int64 // body bytes verified
	alive atomic.Bool

	mu       sync.Mutex
	lastRead int64 // ns since start; 0 before the first body byte
	maxGap   int64
}

// Start opens cfg.Streams streams (at most 64 at a time), waits until every
// one has verified its first body bytes, and starts the short connections.
// ctx bounds the opening only; the Client runs until Stop. On error every
// connection is closed.
func Start(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.NamePrefix == "" {
		cfg.NamePrefix = DefaultNamePrefix
	}
	if cfg.ShortBytes <= 0 {
		cfg.ShortBytes = DefaultShortBytes
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Streams < 0 || cfg.NewConnRate < 0 {
		return nil, fmt.Errorf("loadclient: invalid config: %d streams, %v new connections/s", cfg.Streams, cfg.NewConnRate)
	}
	c := &Client{
		cfg:     cfg,
		start:   time.Now(),
		dialer:  net.Dialer{Timeout: cfg.DialTimeout},
		streams: make([]*streamConn, cfg.Streams),
		failed:  make(chan struct{}),
		waiters: make(map[chan struct{}]struct{}),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	for i := range c.streams {
		c.streams[i] = &streamConn{name: cfg.NamePrefix + strconv.Itoa(i)}
	}

	// Open with bounded concurrency; each stream reports once it verified
	// its first bytes (or failed before).
	opened := make(chan error, cfg.Streams)
	sem := make(chan struct{}, openConcurrency)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for _, s := range c.streams {
			select {
			case sem <- struct{}{}:
			case <-c.ctx.Done():
				return
			}
			c.wg.Add(1)
			go c.runStream(s, func(err error) {
				<-sem
				opened <- err
			})
		}
	}()
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	var err error
	for n := 0; n < cfg.Streams && err == nil; {
		select {
		case e := <-opened:
			n++
			if e != nil {
				err = fmt.Errorf("loadclient: open %d streams to %s: %w", cfg.Streams, cfg.Addr, e)
			}
		case <-progress.C:
			cfg.Logf("loadclient: opened %d/%d streams to %s", n, cfg.Streams, cfg.Addr)
		case <-ctx.Done():
			err = fmt.Errorf("loadclient: opening %d streams to %s: %w", cfg.Streams, cfg.Addr, ctx.Err())
		}
	}
	if err != nil {
		c.Stop()
		return nil, err
	}
	if cfg.NewConnRate > 0 {
		c.wg.Add(1)
		go c.shortLoop()
	}
	return c, nil
}

// since returns the monotonic time since Start in nanoseconds (never 0).
func (c *Client) since() int64 { return int64(time.Since(c.start)) + 1 }

// runStream dials one stream, reports it opened after the first verified
// body bytes, and reads it until it fails or the client stops.
func (c *Client) runStream(s *streamConn, opened func(error)) {
	defer c.wg.Done()
	reported := false
	report := func(err error) {
		if !reported {
			reported = true
			opened(err)
		}
	}
	err := c.readStream(s, func() { report(nil) })
	if err == nil || c.stopping.Load() && !isMismatch(err) {
		report(nil)
		return
	}
	s.alive.Store(false)
	c.failStream(s, err)
	report(err)
}

// readStream returns nil only when the client is stopping.
func (c *Client) readStream(s *streamConn, opened func()) error {
	nc, err := c.dialer.DialContext(c.ctx, "tcp", c.cfg.Addr)
	if err != nil {
		return fmt.Errorf("stream %q: dial %s: %w", s.name, c.cfg.Addr, err)
	}
	s.conn.Store(&nc)
	if c.stopping.Load() {
		// Stop may have missed this connection.
		nc.Close()
		return nil
	}
	_ = nc.SetDeadline(time.Now().Add(openTimeout))
	if _, err := io.WriteString(nc, "GET /streams/"+s.name+" HTTP/1.1\r\nHost: "+c.cfg.Addr+"\r\n\r\n"); err != nil {
		return fmt.Errorf("stream %q: send request: %w", s.name, err)
	}
	s.alive.Store(true)
	buf := make([]byte, readBufSize)
	v := stream.NewVerifier(s.name, 0)
	hdr := 0 // header bytes matched so far
	first := true
	for {
		n, rerr := nc.Read(buf)
		p := buf[:n]
		if hdr < len(ResponseHeader) && n > 0 {
			m := min(len(p), len(ResponseHeader)-hdr)
			if string(p[:m]) != ResponseHeader[hdr:hdr+m] {
				return &headerError{name: s.name, got: string(p[:m]), off: hdr}
			}
			hdr += m
			p = p[m:]
		}
		if len(p) > 0 {
			c.noteRead(s)
			if err := v.Check(p); err != nil {
				return err
			}
			s.bytes.Add(int64(len(p)))
			if c.nwait.Load() > 0 {
				c.kick()
			}
			if first {
				first = false
				_ = nc.SetDeadline(time.Time{})
				opened()
			}
		}
		if rerr != nil {
			if c.stopping.Load() {
				return nil
			}
			return fmt.Errorf("stream %q at offset %d: %w", s.name, v.Offset(), rerr)
		}
	}
}

// noteRead updates the stall measurement of s.
func (c *Client) noteRead(s *streamConn) {
	now := c.since()
	s.mu.Lock()
	if s.lastRead != 0 {
		if gap := now - max(s.lastRead, c.resetAt.Load()); gap > s.maxGap {
			s.maxGap = gap
		}
	}
	s.lastRead = now
	s.mu.Unlock()
}

// headerError is a response header that is not ResponseHeader.
type headerError struct {
	name string
	off  int
	got  string
}

func (e *headerError) Error() string {
	return fmt.Sprintf("stream %q: bad response header at byte %d: got %q, want %q", e.name, e.off, e.got, ResponseHeader[e.off:])
}

func isMismatch(err error) bool {
	var me *stream.MismatchError
	var he *headerError
	return errors.As(err, &me) || errors.As(err, &he)
}

// failStream counts the failure that ended s.
func (c *Client) failStream(s *streamConn, err error) {
	switch {
	case isMismatch(err):
		c.mismatches.Add(1)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		c.closed.Add(1)
		err = fmt.Errorf("%w (the server ended a stream)", err)
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		c.resets.Add(1)
	default:
		c.errs.Add(1)
	}
	c.noteFailure(err)
	if c.nwait.Load() > 0 {
		c.kick()
	}
}

func (c *Client) noteFailure(err error) {
	msg := err.Error()
	c.mu.Lock()
	if len(c.firstErrs) < maxErrors {
		c.firstErrs = append(c.firstErrs, msg)
	}
	c.mu.Unlock()
	c.cfg.Logf("loadclient: %s", msg)
	c.failedOnce.Do(func() { close(c.failed) })
}

// Failed is closed at the first failure of any kind.
func (c *Client) Failed() <-chan struct{} { return c.failed }

// shortLoop opens NewConnRate short connections per second.
func (c *Client) shortLoop() {
	defer c.wg.Done()
	interval := max(time.Duration(float64(time.Second)/c.cfg.NewConnRate), 10*time.Millisecond)
	t := time.NewTicker(interval)
	defer t.Stop()
	var inFlight atomic.Int64
	last, credit, n := time.Now(), 0.0, 0
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-t.C:
			credit += now.Sub(last).Seconds() * c.cfg.NewConnRate
			last = now
		}
		for ; credit >= 1; credit-- {
			if inFlight.Load() >= maxShortFlight {
				c.shortFailed.Add(1)
				c.noteFailure(fmt.Errorf("short connection: %d already in flight, server not answering", maxShortFlight))
				continue
			}
			inFlight.Add(1)
			c.wg.Add(1)
			name := c.cfg.NamePrefix + "short-" + strconv.Itoa(n)
			n++
			go func() {
				defer c.wg.Done()
				defer inFlight.Add(-1)
				if err := c.short(name); err != nil && (isMismatch(err) || !c.stopping.Load()) {
					if isMismatch(err) {
						c.mismatches.Add(1)
					}
					c.shortFailed.Add(1)
					c.noteFailure(err)
				}
			}()
		}
	}
}

// short opens one connection, verifies ShortBytes body bytes and closes it.
func (c *Client) short(name string) error {
	nc, err := c.dialer.DialContext(c.ctx, "tcp", c.cfg.Addr)
	if err != nil {
		return fmt.Errorf("short connection %q: dial %s: %w", name, c.cfg.Addr, err)
	}
	defer nc.Close()
	stop := context.AfterFunc(c.ctx, func() { nc.Close() })
	defer stop()
	_ = nc.SetDeadline(time.Now().Add(shortTimeout))
	if _, err := io.WriteString(nc, "GET /streams/"+name+" HTTP/1.1\r\nHost: "+c.cfg.Addr+"\r\n\r\n"); err != nil {
		return fmt.Errorf("short connection %q: send request: %w", name, err)
	}
	buf := make([]byte, len(ResponseHeader)+c.cfg.ShortBytes)
	if _, err := io.ReadFull(nc, buf); err != nil {
		return fmt.Errorf("short connection %q: read %d bytes: %w", name, len(buf), err)
	}
	if string(buf[:len(ResponseHeader)]) != ResponseHeader {
		return &headerError{name: name, got: string(buf[:len(ResponseHeader)])}
	}
	if err := stream.NewVerifier(name, 0).Check(buf[len(ResponseHeader):]); err != nil {
		return fmt.Errorf("short connection: %w", err)
	}
	c.shortBytes.Add(int64(c.cfg.ShortBytes))
	c.shortOK.Add(1)
	return nil
}

// Snapshot returns the current counters; after Stop, the final ones.
func (c *Client) Snapshot() Stats {
	if c.stopped.Load() {
		return c.final
	}
	return c.snapshot(!c.stopping.Load())
}

// snapshot collects the counters; openGaps includes the gaps still open on
// live streams in LongestStall.
func (c *Client) snapshot(openGaps bool) Stats {
	st := Stats{
		Streams:     len(c.streams),
		Resets:      c.resets.Load(),
		Closed:      c.closed.Load(),
		Mismatches:  c.mismatches.Load(),
		Errors:      c.errs.Load(),
		ShortOK:     c.shortOK.Load(),
		ShortFailed: c.shortFailed.Load(),
	}
	st.BytesVerified = c.shortBytes.Load()
	now, resetAt := c.since(), c.resetAt.Load()
	var longest int64
	for _, s := range c.streams {
		st.BytesVerified += s.bytes.Load()
		alive := s.alive.Load()
		if alive {
			st.Alive++
		}
		s.mu.Lock()
		g := s.maxGap
		if alive && openGaps && s.lastRead != 0 {
			g = max(g, now-max(s.lastRead, resetAt))
		}
		s.mu.Unlock()
		longest = max(longest, g)
	}
	st.LongestStall = time.Duration(longest)
	c.mu.Lock()
	st.FirstErrors = append([]string(nil), c.firstErrs...)
	c.mu.Unlock()
	return st
}

// Stop closes every connection, waits for the goroutines and returns the
// final counters. Streams that were healthy until Stop count as Alive.
// Calling it again returns the same counters.
func (c *Client) Stop() Stats {
	c.stopOnce.Do(func() {
		// Measure the stall up to now, before closing makes reads fail.
		st := c.snapshot(true)
		c.stopping.Store(true)
		c.cancel()
		for _, s := range c.streams {
			if p := s.conn.Load(); p != nil {
				(*p).Close()
			}
		}
		c.wg.Wait()
		c.final = c.snapshot(false)
		c.final.LongestStall = max(c.final.LongestStall, st.LongestStall)
		c.stopped.Store(true)
	})
	return c.final
}

// ResetStall restarts the longest-stall measurement, for instance just
// before a migration, so that the next Snapshot reports the stall it caused.
func (c *Client) ResetStall() {
	c.resetAt.Store(c.since())
	for _, s := range c.streams {
		s.mu.Lock()
		s.maxGap = 0
		s.mu.Unlock()
	}
}

// Mark records the bytes received so far on every stream.
func (c *Client) Mark() Mark {
	m := Mark{bytes: make([]int64, len(c.streams))}
	for i, s := range c.streams {
		m.bytes[i] = s.bytes.Load()
	}
	return m
}

// WaitAdvanced waits until every stream that is still alive has received
// at least minBytes more body bytes than at m. Streams that failed are
// skipped: they are counted in Stats.
func (c *Client) WaitAdvanced(ctx context.Context, m Mark, minBytes int64) error {
	if len(m.bytes) != len(c.streams) {
		return fmt.Errorf("loadclient: mark of %d streams used with a client of %d", len(m.bytes), len(c.streams))
	}
	ch := make(chan struct{}, 1)
	c.waitMu.Lock()
	c.waiters[ch] = struct{}{}
	c.nwait.Add(1)
	c.waitMu.Unlock()
	defer func() {
		c.waitMu.Lock()
		delete(c.waiters, ch)
		c.nwait.Add(-1)
		c.waitMu.Unlock()
	}()
	pending := make([]int, len(c.streams))
	for i := range pending {
		pending[i] = i
	}
	for {
		keep := pending[:0]
		for _, i := range pending {
			s := c.streams[i]
			if s.alive.Load() && s.bytes.Load() < m.bytes[i]+minBytes {
				keep = append(keep, i)
			}
		}
		pending = keep
		if len(pending) == 0 {
			return nil
		}
		if c.stopping.Load() {
			return fmt.Errorf("loadclient: client stopped while %d streams had not advanced %d bytes", len(pending), minBytes)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			s := c.streams[pending[0]]
			return fmt.Errorf("loadclient: %d of %d streams advanced less than %d bytes since the mark (first: %q at %d, mark %d): %w",
				len(pending), len(c.streams), minBytes, s.name, s.bytes.Load(), m.bytes[pending[0]], ctx.Err())
		}
	}
}

// kick wakes every WaitAdvanced.
func (c *Client) kick() {
	c.waitMu.Lock()
	for ch := range c.waiters {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	c.waitMu.Unlock()
}
