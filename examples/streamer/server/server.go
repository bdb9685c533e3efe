// Package server is the example streaming workload: an HTTP/1.1
// "radio" server whose connections survive a handoff to a new process.
//
// GET /streams/NAME answers 200 with no length and then streams the body
// of stream NAME (see examples/streamer/stream) forever, paced per
// connection. Any other path but /echo (below) gets 404, a method other
// than GET 405, a malformed request 400; each of those is followed by a
// close. Requests are parsed by hand on the raw net.Conn, not with
// net/http, so that a connection can be frozen and handed over at any
// point, even in the middle of its request.
//
// GET /echo answers 200 and then serves requests and responses, as a
// websocket or MQTT server would: the client sends requests of exactly 16
// bytes, and each is answered at once with the connection's sequence
// number (0 for the first request) as 10 decimal digits, a space and the
// 16 request bytes. The sequence number travels in the connection's
// state, so a client can tell that across a handoff no request went
// unanswered or was answered twice:
//
//	printf 'GET /echo HTTP/1.1\r\n\r\nhello, world 01\nhello, world 02\n' | nc 127.0.0.1 8080
//
// # Pacing
//
// Each streaming connection has one time.Timer: every Tick it generates
// Rate*Tick bytes (at least one) into a pooled buffer and writes them. The
// timers of different connections start at different instants, which
// spreads the work over the tick instead of waking every goroutine at once;
// buffers are taken from a sync.Pool only while bytes are pending, so an
// idle connection holds none and the steady state allocates nothing. A
// client that reads slower than Rate blocks its Write and loses ticks: the
// rate is an upper bound.
//
// The pace survives a handoff: the state says when the next chunk is due,
// and the next process sends it then, at once if that time passed during
// the handoff. It starts the connections that are due first first. A
// client whose chunk was not due during the pause sees nothing of the
// handoff, and the chunks of thousands of connections stay spread over
// the tick rather than all falling due when the new process takes over.
//
// # Handoff
//
// Every connection is tracked with the handoff SDK. Its state record
// (see connState) holds the phase, the stream name, the offset of the next
// byte to generate and the bytes generated but not yet written, or the
// request bytes read so far. The next process first writes those bytes and
// continues at exactly that offset, so nothing is lost or duplicated. While
// any connection is frozen the others skip their ticks, leaving the CPU to
// the migration.
package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	handoff "github.com/handoff-dev/handoff/sdk"
)

// Defaults for Config.
const (
	DefaultRate = 16384
	DefaultTick = 100 * time.Millisecond
	DefaultName = "streamer"
)

// Config configures Run.
type Config struct {
	Addr           string                           // listen address, e.g. "127.0.0.1:8080"
	Rate           int                              // body bytes per second per connection; 0 means DefaultRate
	Tick           time.Duration                    // pacing interval; 0 means DefaultTick
	SessionName    string                           // handoff session name; "" means DefaultName
	Socket         string                           // handoff agent socket; "" lets the SDK choose
	Standby        bool                             // wait for a handoff from another process before serving
	StandbyTimeout time.Duration                    // how long to wait in standby; 0 means the SDK default
	Expect         int                              // connections a standby process prepares memory and goroutines for; 0 means the SDK default
	Warmup         time.Duration                    // time spent between Listen and Ready, as a server loading caches would
	Logf           func(format string, args ...any) // log sink; nil discards
	OnReady        func(Info)                       // called once listening, before the first Accept
	OnExit         func(Summary)                    // called once all connections were released
	// OnResumed, in a process that received a handoff, is called once
	// every imported connection has carried on (written what it owed, or
	// gone back to reading its request, or ended), with the time since
	// Ready returned: the part of the clients' wait that follows the
	// handoff's pause.
	OnResumed func(imported int, sinceReady time.Duration)

	// onTrack, for tests, sees every tracked connection and its hooks.
	onTrack func(c *conn, h handoff.Hooks)
}

// Info describes a server that is ready to serve.
type Info struct {
	Addr      net.Addr // the bound listen address
	Inherited bool     // this process received a handoff
	Imported  int      // connections received with it
	// Started is how long after the handoff completed (Ready returned)
	// every imported connection had been decoded, tracked and handed to
	// its goroutine: the part of OnResumed's wait spent before any of
	// them could run.
	Started time.Duration
}

// Summary counts what a server did, reported when Run ends.
type Summary struct {
	Accepted  int64 // connections accepted by this process
	Imported  int64 // connections received from a previous process
	Rejected  int64 // requests answered with an error status
	Finished  int64 // connections that ended in this process (client gone, error response, shutdown)
	Moved     int64 // connections handed to another process
	BytesSent int64 // bytes written, headers included
	MovedAway bool  // Run ended because this process's sockets were moved away
}

// Run serves until ctx is done or until this process's sockets were moved
// to another process (Summary.MovedAway); both return nil.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Tick == 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.SessionName == "" {
		cfg.SessionName = DefaultName
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Rate < 0 || cfg.Tick < 0 {
		return fmt.Errorf("streamer: invalid pacing: rate %d bytes/s, tick %v", cfg.Rate, cfg.Tick)
	}
	var pool *goPool
	if cfg.Standby {
		n := cfg.Expect
		if n == 0 {
			n = handoff.DefaultExpect
		}
		pool = newGoPool(n)
		defer pool.close()
	}
	p, err := handoff.Join(ctx, handoff.Options{
		Socket: cfg.Socket, Name: cfg.SessionName, Standby: cfg.Standby,
		StandbyTimeout: cfg.StandbyTimeout, Expect: cfg.Expect, Logf: cfg.Logf,
	})
	if err != nil {
		return fmt.Errorf("streamer: join handoff session %q: %w", cfg.SessionName, err)
	}
	ln, err := p.Listen("tcp", cfg.Addr)
	if err != nil {
		_ = p.Close()
		return fmt.Errorf("streamer: listen on %s: %w", cfg.Addr, err)
	}
	inherited := p.Inherited() // the SDK forgets it once Ready completes
	if cfg.Warmup > 0 {
		// Received sockets wait in the SDK, unused, until Ready: a
		// process that dies now loses nothing, the source serves on.
		cfg.Logf("streamer: warming up for %v", cfg.Warmup)
		select {
		case <-time.After(cfg.Warmup):
		case <-ctx.Done():
			_ = ln.Close()
			_ = p.Close()
			return fmt.Errorf("streamer: warming up: %w", ctx.Err())
		}
	}
	imported, err := p.Ready()
	if err != nil {
		_ = ln.Close()
		_ = p.Close()
		return fmt.Errorf("streamer: complete incoming handoff of session %q: %w", cfg.SessionName, err)
	}
	readyAt := time.Now()
	s := newServer(cfg, p)
	s.pool = pool
	if len(imported) > 0 {
		// One more than the connections, counted down after OnReady, so
		// that OnResumed always comes after it.
		s.toResume.Store(int64(len(imported)) + 1)
		s.onResumed = func() {
			if s.toResume.Add(-1) == 0 && cfg.OnResumed != nil {
				cfg.OnResumed(len(imported), time.Since(readyAt))
			}
		}
	}
	s.importConns(imported)
	started := time.Since(readyAt)
	s.pool = nil
	pool.close()
	if cfg.OnReady != nil {
		cfg.OnReady(Info{Addr: ln.Addr(), Inherited: inherited, Imported: len(imported), Started: started})
	}
	if s.onResumed != nil {
		s.onResumed()
	}
	acceptDone := make(chan error, 1)
	go func() { acceptDone <- s.acceptLoop(ln) }()

	var runErr error
	movedAway := false
	acceptCh := (<-chan error)(acceptDone)
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-p.Done():
			movedAway = true
			break wait
		case err := <-acceptCh:
			acceptCh = nil
			if err != nil {
				runErr = err
				break wait
			}
			// The listener was closed under us (by the SDK during a
			// handoff): wait for the outcome.
		}
	}
	s.shutdown()
	_ = ln.Close()
	if acceptCh != nil {
		<-acceptCh
	}
	_ = p.Close()
	s.drain()
	if cfg.OnExit != nil {
		sum := s.summary()
		sum.MovedAway = movedAway
		cfg.OnExit(sum)
	}
	return runErr
}

// server holds what the connections of one Run share.
type server struct {
	cfg     Config
	p       *handoff.Process
	chunk   int       // bytes generated per tick
	pool    *goPool   // goroutines prepared in standby for the imported connections; nil once they are started
	bufs    sync.Pool // *[]byte with room for okHeader and a chunk
	reqBufs sync.Pool // *[maxRequest]byte

	stop     chan struct{} // closed when shutting down
	stopping atomic.Bool
	released chan struct{} // closed when the SDK will call no more hooks

	mu    sync.Mutex
	conns map[*conn]struct{}
	wg    sync.WaitGroup

	frozen    atomic.Int64 // connections frozen and not yet resumed or moved
	toResume  atomic.Int64 // imported connections that have not carried on yet
	onResumed func()       // counts one down; nil when nothing was imported

	accepted, imported, rejected, finished, moved, bytesSent atomic.Int64
}

func newServer(cfg Config, p *handoff.Process) *server {
	chunk := int(int64(cfg.Rate) * int64(cfg.Tick) / int64(time.Second))
	chunk = min(max(chunk, 1), maxUnsent-len(okHeader))
	s := &server{
		cfg:      cfg,
		p:        p,
		chunk:    chunk,
		stop:     make(chan struct{}),
		released: make(chan struct{}),
		conns:    make(map[*conn]struct{}),
	}
	size := len(okHeader) + chunk
	s.bufs.New = func() any { b := make([]byte, size); return &b }
	s.reqBufs.New = func() any { return new([maxRequest]byte) }
	return s
}

func (s *server) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

func (s *server) summary() Summary {
	return Summary{
		Accepted: s.accepted.Load(), Imported: s.imported.Load(), Rejected: s.rejected.Load(),
		Finished: s.finished.Load(), Moved: s.moved.Load(), BytesSent: s.bytesSent.Load(),
	}
}

// acceptLoop accepts until the listener is closed (nil) or fails for good.
func (s *server) acceptLoop(ln net.Listener) error {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, handoff.ErrMoved) || s.stopping.Load() {
				// Closed by us, or the socket went to another process:
				// Run waits for p.Done or ctx.
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// EMFILE and friends: back off as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logf("streamer: accept on %s: %v; retrying in %v", ln.Addr(), err, backoff)
				select {
				case <-time.After(backoff):
				case <-s.stop:
					return nil
				}
				continue
			}
			return fmt.Errorf("streamer: accept on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		s.accepted.Add(1)
		s.start(nc, nil)
	}
}

// isTemporary reports accept errors worth retrying.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// importConns starts serving the connections received in a handoff, those
// whose next chunk is due first first: starting thousands of goroutines
// takes a while, and a connection that is not due yet can wait for it.
func (s *server) importConns(imported []handoff.Imported) {
	type decoded struct {
		ic handoff.Imported
		st connState
	}
	ds := make([]decoded, 0, len(imported))
	for _, ic := range imported {
		st, err := decodeState(ic.State)
		if err != nil {
			s.logf("streamer: imported connection from %s: %v; closing it", ic.Conn.RemoteAddr(), err)
			_ = ic.Conn.Close()
			if s.onResumed != nil {
				s.onResumed()
			}
			continue
		}
		ds = append(ds, decoded{ic, st})
	}
	slices.SortStableFunc(ds, func(a, b decoded) int { return cmp.Compare(a.st.Due, b.st.Due) })
	for i := range ds {
		s.imported.Add(1)
		s.start(ds[i].ic.Conn, &ds[i].st)
	}
}

// start tracks nc and serves it from st (nil: a new connection).
func (s *server) start(nc net.Conn, st *connState) {
	c := newConn(s, nc)
	if st != nil {
		c.restore(st)
		c.imported, c.resumed = true, s.onResumed
	}
	if !s.add(c) {
		c.releaseReq()
		_ = nc.Close()
		c.markResumed()
		return
	}
	h := c.hooks()
	t, err := s.p.Track(nc, h)
	if err != nil {
		s.logf("streamer: track connection from %s: %v; closing it", nc.RemoteAddr(), err)
		s.remove(c)
		c.releaseReq()
		s.wg.Done()
		_ = nc.Close()
		c.markResumed()
		return
	}
	c.t = t
	if s.cfg.onTrack != nil {
		s.cfg.onTrack(c, h)
	}
	if !s.pool.run(c.run) {
		go c.run()
	}
}

// add registers c and counts its goroutine unless the server is stopping.
func (s *server) add(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *server) remove(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// drain lets frozen connections go (the SDK calls no more hooks) and
// waits for every connection goroutine.
func (s *server) drain() {
	close(s.released)
	s.wg.Wait()
}

// shutdown makes every connection goroutine stop, except frozen ones,
// which wait for their hook or for released.
func (s *server) shutdown() {
	s.mu.Lock()
	if s.stopping.Load() {
		s.mu.Unlock()
		return
	}
	s.stopping.Store(true)
	close(s.stop)
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.interrupt()
	}
}
