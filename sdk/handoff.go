package handoff

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/handoff-dev/handoff/wire"
)

// DefaultSocket is where the agent listens when neither Options.Socket nor
// the HANDOFF_SOCKET environment variable says otherwise.
const DefaultSocket = "/run/handoff/agent.sock"

// DefaultStandbyTimeout is how long a standby process waits for a handoff
// when Options.StandbyTimeout is zero.
const DefaultStandbyTimeout = 5 * time.Minute

// DefaultAcceptGrace is how long a migration waits for connections that
// Accept returned just before it started to be passed to Track.
const DefaultAcceptGrace = 100 * time.Millisecond

// Errors callers can test with errors.Is.
var (
	// ErrSkip, returned by a Freeze hook, leaves that connection in this
	// process: it is not moved and the migration goes on without it.
	ErrSkip = errors.New("handoff: connection not moved")
	// ErrAborted means an incoming handoff was called off before this
	// process took over; the old process still serves.
	ErrAborted = errors.New("handoff: incoming handoff aborted")
	// ErrMoved means the operation came too late: this process's sockets
	// have already been handed to another process.
	ErrMoved = errors.New("handoff: sockets moved to another process")
	// ErrNotSupported means a connection cannot be moved because it does
	// not expose its descriptor (it does not implement syscall.Conn).
	ErrNotSupported = errors.New("handoff: connection does not expose a descriptor")
	// ErrStandbyTimeout means a standby process waited in vain.
	ErrStandbyTimeout = errors.New("handoff: no handoff arrived while in standby")
)

// Options configure Join. The zero value is ready to use.
type Options struct {
	// Socket is the agent's unix socket. Default: $HANDOFF_SOCKET, else
	// DefaultSocket.
	Socket string
	// Name labels this process for people (handoffctl sessions) and keys
	// the agent's fd store for in-place restarts. Default: $HANDOFF_NAME,
	// else the program's base name.
	Name string
	// Standby makes Join wait for another process's sockets before it
	// returns, instead of starting fresh. Without it Join asks the agent,
	// which may tell it to wait (see the package documentation).
	Standby bool
	// StandbyTimeout bounds the wait in standby. Default:
	// DefaultStandbyTimeout.
	StandbyTimeout time.Duration
	// Expect is how many connections a standby process expects to
	// receive. Join prepares memory for them before it joins the agent,
	// about 300 bytes each, which the process keeps: adopting them during
	// the pause then touches no fresh pages, which on a virtual machine
	// cost about ten microseconds each on first touch. The memory has
	// room for an eighth more, and 64; connections beyond that still
	// arrive, in fresh memory. Only used with Standby. Default:
	// DefaultExpect; negative: prepare nothing.
	Expect int
	// AcceptGrace bounds how long a migration waits for connections that
	// were accepted but not yet tracked. Default: DefaultAcceptGrace.
	AcceptGrace time.Duration
	// Logf receives the SDK's few log lines. Default: log.Printf.
	Logf func(format string, args ...any)
}

func (o *Options) defaults() {
	if o.Socket == "" {
		o.Socket = os.Getenv("HANDOFF_SOCKET")
	}
	if o.Socket == "" {
		o.Socket = DefaultSocket
	}
	if o.Name == "" {
		o.Name = os.Getenv("HANDOFF_NAME")
	}
	if o.Name == "" {
		o.Name = filepath.Base(os.Args[0])
	}
	if o.StandbyTimeout <= 0 {
		o.StandbyTimeout = DefaultStandbyTimeout
	}
	if o.Expect == 0 {
		o.Expect = DefaultExpect
	}
	if o.AcceptGrace <= 0 {
		o.AcceptGrace = DefaultAcceptGrace
	}
	if o.Logf == nil {
		o.Logf = log.Printf
	}
}

// Process is this process's membership in handoff: the sockets it owns,
// the connections it tracks and its session with the agent.
type Process struct {
	opts      Options
	agent     *wire.Conn // nil when no agent is available
	sessionID uint64

	mu         sync.Mutex
	cond       *sync.Cond
	listeners  map[*listener]struct{}
	packets    map[*packetConn]struct{}
	tracked    trackList
	accepted   map[net.Conn]time.Time // returned by Accept, not yet tracked
	export     *exportTx              // the outgoing migration in progress
	exports    uint64                 // outgoing migrations started, for copyMark
	moved      bool
	closing    bool // Close was called: the application is leaving
	readyDone  bool
	agentGone  bool
	controlRun bool
	stop       chan struct{} // closed by Close: no more rejoining

	in        *incoming // the incoming handoff until Ready finishes it
	res       *reserve  // memory prepared in standby for the incoming handoff
	inherited bool      // this process received a handoff
	done      chan struct{}
}

// Join connects this process to the agent. When a handoff for this
// process is pending, when Options.Standby is set, or when the agent says
// that a predecessor will hand over to it (asked unless Options.Standby is
// set), it receives the sockets before returning; they are then claimed
// with Listen, ListenPacket and Ready. Without a reachable agent Join logs
// that handoff is unavailable and returns a Process that uses fresh
// sockets. A process the agent told to wait, and to which nothing was
// handed within StandbyTimeout, logs so and joins again to serve fresh
// sockets. Join returns an error only when an incoming handoff failed
// (ErrAborted) or a standby wait that Options.Standby asked for ended
// without one (ErrStandbyTimeout, or ctx's error).
func Join(ctx context.Context, opts Options) (*Process, error) {
	opts.defaults()
	p := &Process{
		opts:      opts,
		listeners: map[*listener]struct{}{},
		packets:   map[*packetConn]struct{}{},
		accepted:  map[net.Conn]time.Time{},
		done:      make(chan struct{}),
		stop:      make(chan struct{}),
	}
	p.cond = sync.NewCond(&p.mu)
	if opts.Standby {
		// Before the agent knows of this process: a migration to it can
		// start as soon as it has joined.
		p.res = newReserve(withSlack(opts.Expect))
		// Grow the descriptor table now rather than during the pause.
		_, _ = wire.ReserveFDTable()
	}
	flags := wire.HelloAsk
	if opts.Standby {
		flags = wire.HelloStandby
	}
	w, err := p.hello(flags)
	if err != nil {
		return p.unavailable(err)
	}
	pending, told := w.Flags&wire.WelcomePending != 0, w.Flags&wire.WelcomeStandby != 0
	if !pending && !told && !opts.Standby {
		p.startControl()
		return p, nil
	}
	if told {
		p.logf("the agent says a predecessor will hand its sockets over; waiting up to %v", opts.StandbyTimeout)
		p.res = newReserve(withSlack(opts.Expect))
	}
	if !opts.Standby {
		_, _ = wire.ReserveFDTable()
	}
	standby := opts.Standby || told
	until := time.Now().Add(opts.StandbyTimeout)
	if pending && !standby {
		until = time.Now().Add(pendingWait)
	}
	var in *incoming
	for {
		in, err = p.receive(ctx, until)
		if !errors.Is(err, errLostBeforeBegin) {
			break
		}
		// The agent restarted or was upgraded while this process waited:
		// join it again, and wait on for what remains of the wait.
		p.logf("lost the agent while waiting for a handoff (%v); joining it again", err)
		var w wire.Welcome
		if w, err = p.rejoinWaiting(ctx, flags, until); err != nil {
			break
		}
		pending, told = w.Flags&wire.WelcomePending != 0, w.Flags&wire.WelcomeStandby != 0
		standby = opts.Standby || told
		if !pending && !standby {
			// Nothing is on its way any more: serve fresh sockets.
			p.logf("the agent joined again has no handoff for this process; serving with fresh sockets")
			p.startControl()
			return p, nil
		}
	}
	if told && !pending && errors.Is(err, ErrStandbyTimeout) {
		// The predecessor never came: serve fresh sockets rather than
		// stay down, in a new session the agent does not count as
		// standby.
		p.agent.Close()
		p.agent, p.res = nil, nil
		p.logf("no handoff arrived within %v of joining; serving with fresh sockets", opts.StandbyTimeout)
		if _, err := p.hello(0); err != nil {
			return p.unavailable(err)
		}
		p.startControl()
		return p, nil
	}
	if err != nil {
		p.agent.Close()
		return nil, err
	}
	p.in = in
	p.inherited = true
	return p, nil
}

// pendingWait bounds how long a process for which the agent holds stored
// descriptors waits for their delivery.
const pendingWait = 30 * time.Second

// rejoinWaiting joins the agent again, with the Hello flags of the first
// join, after the session was lost while the process waited for a
// handoff: with rejoin's backoff, until the wait ends (an error
// wrapping ErrStandbyTimeout) or ctx does.
func (p *Process) rejoinWaiting(ctx context.Context, flags uint8, until time.Time) (wire.Welcome, error) {
	p.agent.Close()
	var b backoff
	lost := time.Now()
	for attempt := 1; ; attempt++ {
		wait := b.next()
		if left := time.Until(until); wait > left {
			return wire.Welcome{}, fmt.Errorf("%w: the agent was lost %v before the wait ended, and could not be joined again", ErrStandbyTimeout, time.Since(lost).Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return wire.Welcome{}, fmt.Errorf("standby: %w", ctx.Err())
		case <-time.After(wait):
		}
		w, err := p.hello(flags)
		if err != nil {
			if attempt == 1 || attempt%10 == 0 {
				p.logf("could not join the agent again (attempt %d): %v", attempt, err)
			}
			continue
		}
		p.logf("joined the agent again as session %d, %v after losing it; waiting on", w.SessionID, time.Since(lost).Round(time.Millisecond))
		return w, nil
	}
}

// maxVersion is the newest protocol version the SDK offers; tests lower
// it to play an older peer.
var maxVersion uint16 = wire.MaxVersion

// hello opens the session with the agent: Hello with flags, then the
// agent's Welcome. On success p.agent and p.sessionID are set.
func (p *Process) hello(flags uint8) (wire.Welcome, error) {
	c, w, err := p.dial(flags)
	if err != nil {
		return w, err
	}
	p.mu.Lock()
	p.agent = c
	p.sessionID = w.SessionID
	p.mu.Unlock()
	return w, nil
}

// dial opens a session with the agent: Hello with flags, then the agent's
// Welcome, on a connection of its own.
func (p *Process) dial(flags uint8) (*wire.Conn, wire.Welcome, error) {
	var w wire.Welcome
	sock := p.opts.Socket
	c, err := wire.Dial(sock)
	if err != nil {
		return nil, w, err
	}
	hello := wire.Hello{MinVersion: wire.MinVersion, MaxVersion: maxVersion, Role: wire.RoleApp, Flags: flags, Name: p.opts.Name}
	if err := c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeHello}, Body: hello.Marshal()}); err != nil {
		c.Close()
		return nil, w, fmt.Errorf("say hello to agent %s: %w", sock, err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := c.Recv()
	c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return nil, w, fmt.Errorf("wait for agent %s: %w", sock, err)
	}
	if m.Type == wire.TypeError {
		m.CloseFDs()
		var f wire.Failure
		_ = f.Unmarshal(m.Body)
		c.Close()
		return nil, w, fmt.Errorf("agent %s refused the session: %w", sock, f)
	}
	if m.Type != wire.TypeWelcome || w.Unmarshal(m.Body) != nil {
		m.CloseFDs()
		c.Close()
		return nil, w, fmt.Errorf("agent %s: %w: expected welcome, got %v", sock, wire.ErrMalformed, m.Type)
	}
	m.CloseFDs()
	if w.Version < 2 {
		// An agent of version 1 knows no WelcomeStandby.
		w.Flags &^= wire.WelcomeStandby
	}
	c.SetVersion(uint8(w.Version))
	return c, w, nil
}

func (p *Process) unavailable(err error) (*Process, error) {
	if p.opts.Standby {
		return nil, fmt.Errorf("standby needs the agent: %w", err)
	}
	p.opts.Logf("handoff: unavailable, serving with fresh sockets: %v", err)
	return p, nil
}

// Available reports whether this process has a session with an agent.
func (p *Process) Available() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.agent != nil && !p.agentGone
}

// SessionID is the agent's number for this process (0 without an agent),
// as handoffctl sessions shows it.
// It changes when the process joins again after losing the agent.
func (p *Process) SessionID() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sessionID
}

// Inherited reports whether this process received sockets from another.
func (p *Process) Inherited() bool { return p.inherited }

// Done is closed once this process's sockets were handed to another
// process and the handoff committed: the application should finish and
// exit.
func (p *Process) Done() <-chan struct{} { return p.done }

// Close ends the session with the agent for good (the SDK does not join
// again). Sockets stay open and the application keeps serving; it just can
// no longer be migrated. During an
// outgoing handoff, Close before everything was exported calls it off and
// this process keeps its sockets; after, the sockets go on to the new
// process (or the agent's store) as if this process had exited, and Done
// is closed: an application that shuts down on SIGTERM mid-handoff hands
// its clients over rather than dropping them.
func (p *Process) Close() error {
	p.mu.Lock()
	a := p.agent
	p.agentGone = true
	if !p.closing {
		close(p.stop)
	}
	p.closing = true
	p.mu.Unlock()
	if a != nil {
		return a.Close()
	}
	return nil
}

func (p *Process) logf(format string, args ...any) { p.opts.Logf("handoff: "+format, args...) }

// Imported is a connection received from the previous process, with the
// state record its Freeze hook returned there.
type Imported struct {
	Conn  net.Conn
	State []byte
}

// Ready says this process is ready to serve. In a process that received a
// handoff it completes the transaction: it returns once the old process
// has let go of the sockets, with the connections it handed over, and only
// then may the application use them; inherited listeners start accepting
// at the same moment. If the handoff is called off instead, Ready closes
// everything it received and returns ErrAborted. In a fresh process it
// returns nil, nil. Call it once, after Listen and ListenPacket.
func (p *Process) Ready() ([]Imported, error) {
	p.mu.Lock()
	if p.readyDone {
		p.mu.Unlock()
		return nil, errors.New("handoff: ready called twice")
	}
	p.readyDone = true
	in := p.in
	p.mu.Unlock()
	if in == nil {
		return nil, nil
	}
	conns, err := in.finish(p)
	if err != nil {
		return nil, err
	}
	p.startControl()
	return conns, nil
}
