package server

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/stream"
	handoff "github.com/handoff-dev/handoff/sdk"
)

// end says why a connection's goroutine stopped serving it.
type end int

const (
	endNone  end = iota // keep going
	endDone             // finished normally: response complete or client gone
	endError            // unexpected I/O error
	endStop             // server shutting down
	endMoved            // the connection now belongs to another process
)

// freezeReq asks a connection's goroutine to stop at a safe point and
// report its state.
type freezeReq struct {
	reply chan []byte
}

// conn is one client connection. Its goroutine (run) owns all I/O and the
// fields marked "goroutine" below; the hooks talk to it through channels,
// or read the fields under mu while it is parked.
//
// Freeze protocol. Most of the time a streaming connection's goroutine is
// parked between two ticks, with nothing in flight: then the Freeze hook
// takes the state itself, under mu, and marks the connection frozenIdle
// without waking the goroutine; the goroutine, whenever it wakes, sees
// the mark and waits for Resume or Moved. This costs no goroutine switch
// and no system call, which is what lets a process freeze thousands of
// connections in a millisecond or two.
//
// Otherwise the goroutine is busy (reading a request, writing, or about to)
// and the hook interrupts it: it sets freezing, then sets a deadline in the
// past on the socket, which makes a Read or Write that is blocked (for
// instance on a client that does not read) return at once with the bytes
// it did transfer. The goroutine accounts for those bytes, sees a timeout
// while freezing is set and waits for the freeze request; if it reached
// its select instead, it receives the request there. It replies with the
// encoded state and waits for Resume (deadline cleared, carry on) or Moved
// (return without closing).
type conn struct {
	s  *server
	nc net.Conn
	t  *handoff.Tracked

	ctl   chan *freezeReq // unbuffered: a Freeze hands its request to the goroutine
	after chan bool       // buffered(1): true = Moved, false = Resume
	done  chan struct{}   // closed when the goroutine stops serving

	mu         sync.Mutex // orders the goroutine's parking against a Freeze
	finished   bool
	busy       bool // the goroutine is not parked: it may touch its fields
	frozenIdle bool // a Freeze took the state while the goroutine was parked
	freezing   atomic.Bool

	// goroutine
	phase   phase
	reqBuf  *[maxRequest]byte
	req     []byte // request bytes read so far (aliases reqBuf or imported state)
	scanned int    // bytes of req already searched for the header end
	name    string
	next    int64  // body offset of the next byte to generate
	pending []byte // produced but not yet written
	bufp    *[]byte
	// stateBuf is memory for the next Freeze's state record, taken (and
	// touched) while the goroutine parks, so that a migration freezing
	// thousands of connections allocates nothing: it runs with the
	// collector held off, and each allocation then came from fresh spans,
	// a page fault per 4 KiB. Handed to the SDK with the state, never
	// reused. Set in park and taken by the idle Freeze, both under mu;
	// the goroutine takes it itself, while busy, when it answers a freeze.
	stateBuf []byte
	timer    *time.Timer
	due      time.Time // when the next chunk is due; zero until streaming
	// imported: the connection came from another process; resumed is
	// called once its goroutine has carried on (nil afterwards).
	imported bool
	resumed  func()
	echo     *echoConn // phaseEcho
}

// echoConn is what a connection in phaseEcho keeps (goroutine).
type echoConn struct {
	seq uint64 // sequence number of the next reply
	in  [echoRequestLen]byte
	n   int // bytes of in read
	out [echoReplyLen]byte
}

func newConn(s *server, nc net.Conn) *conn {
	return &conn{
		s:     s,
		nc:    nc,
		ctl:   make(chan *freezeReq),
		after: make(chan bool, 1),
		done:  make(chan struct{}),
		phase: phaseRequest,
		busy:  true,
	}
}

// restore sets the connection up from a state produced by Freeze in this
// or another process.
func (c *conn) restore(st *connState) {
	c.phase = st.Phase
	switch st.Phase {
	case phaseRequest:
		c.reqBuf = c.s.reqBufs.Get().(*[maxRequest]byte)
		c.req = c.reqBuf[:copy(c.reqBuf[:], st.Request)]
	case phaseStream:
		c.name, c.next, c.pending = st.Name, st.Next, st.Unsent
		// The pace carries on where it was: the chunk is sent when it was
		// due, at once if that was during the handoff.
		c.due = time.Now()
		if st.Due > 0 {
			c.due = time.Unix(0, st.Due)
		}
	case phaseClosing:
		c.pending = st.Unsent
	case phaseEcho:
		c.echo = &echoConn{seq: st.Seq}
		c.echo.n = copy(c.echo.in[:], st.Request)
		c.pending = st.Unsent
	}
}

func (c *conn) hooks() handoff.Hooks {
	return handoff.Hooks{Freeze: c.freeze, Resume: c.resume, Moved: c.moved}
}

// freeze is the Freeze hook.
func (c *conn) freeze() ([]byte, error) {
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		return nil, handoff.ErrSkip
	}
	if !c.busy {
		// Parked: the fields are at rest until the goroutine wakes, and
		// when it does it will see frozenIdle before touching them.
		c.frozenIdle = true
		st := c.encodeState()
		c.mu.Unlock()
		c.s.frozen.Add(1)
		return st, nil
	}
	c.freezing.Store(true)
	_ = c.nc.SetDeadline(time.Now()) // interrupts a blocked Read or Write
	c.mu.Unlock()
	req := &freezeReq{reply: make(chan []byte, 1)}
	select {
	case c.ctl <- req:
	case <-c.done:
		return nil, handoff.ErrSkip
	}
	st := <-req.reply
	c.s.frozen.Add(1)
	return st, nil
}

// resume is the Resume hook.
func (c *conn) resume() {
	c.mu.Lock()
	if c.freezing.Load() {
		if c.s.stopping.Load() {
			_ = c.nc.SetDeadline(time.Now()) // let the goroutine see the shutdown
		} else {
			_ = c.nc.SetDeadline(time.Time{})
		}
		c.freezing.Store(false)
	}
	c.mu.Unlock()
	c.s.frozen.Add(-1)
	select {
	case c.after <- false:
	default:
	}
}

// moved is the Moved hook.
func (c *conn) moved() {
	c.s.frozen.Add(-1)
	select {
	case c.after <- true:
	default:
	}
}

// interrupt makes a blocked Read or Write return so that the goroutine
// notices the shutdown; a frozen connection is left alone.
func (c *conn) interrupt() {
	c.mu.Lock()
	if !c.freezing.Load() && !c.frozenIdle {
		_ = c.nc.SetDeadline(time.Now())
	}
	c.mu.Unlock()
}

// run serves the connection until it ends, is moved or the server stops.
func (c *conn) run() {
	defer c.s.wg.Done()
	if c.imported {
		// A socket received from another process carries no deadline,
		// but a connection object reused in-process would. Done here
		// rather than by start, so that the importing goroutine spends
		// nothing per connection; under mu so as not to undo a Freeze
		// that already interrupted the connection.
		c.mu.Lock()
		if !c.freezing.Load() {
			_ = c.nc.SetDeadline(time.Time{})
		}
		c.mu.Unlock()
	}
	e := c.serve()
	c.markResumed()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.releaseBuf()
	c.releaseReq()
	c.mu.Lock()
	c.finished = true
	c.mu.Unlock()
	close(c.done)
	c.s.remove(c)
	if e == endMoved {
		// Another process owns the socket now: no Untrack, no Close, no
		// shutdown; the SDK closes this process's copy of the descriptor.
		c.s.moved.Add(1)
		return
	}
	if c.t != nil {
		// Close shuts the connection down first: during a handoff's
		// pre-copy the new process holds a copy, and a bare close would
		// leave the client waiting for the end until the copy is dropped.
		_ = c.t.Close()
	} else {
		_ = c.nc.Close()
	}
	c.s.finished.Add(1)
}

func (c *conn) serve() end {
	for {
		if c.s.stopping.Load() {
			return endStop
		}
		var e end
		switch c.phase {
		case phaseRequest:
			e = c.readRequest()
		case phaseEcho:
			e = c.echoLoop()
		default:
			e = c.writeLoop()
		}
		if e != endNone {
			return e
		}
	}
}

// readRequest reads until the end of the request header and switches to
// phaseStream or phaseClosing.
func (c *conn) readRequest() end {
	if c.reqBuf == nil {
		c.reqBuf = c.s.reqBufs.Get().(*[maxRequest]byte)
		c.req = c.reqBuf[:0]
	}
	for {
		if i := headerEnd(c.req, c.scanned); i >= 0 {
			name, echo, resp := parseRequest(c.req[:i])
			c.releaseReq()
			if resp != nil {
				c.s.rejected.Add(1)
				c.phase, c.pending = phaseClosing, resp
				return endNone
			}
			if echo {
				c.phase, c.echo, c.pending = phaseEcho, &echoConn{}, okHeaderBytes
				return endNone
			}
			c.startStream(name)
			return endNone
		}
		c.scanned = len(c.req)
		if len(c.req) == maxRequest {
			c.releaseReq()
			c.s.rejected.Add(1)
			c.phase, c.pending = phaseClosing, respBadRequest
			return endNone
		}
		c.markResumed()
		n, err := c.nc.Read(c.reqBuf[len(c.req):])
		c.req = c.reqBuf[:len(c.req)+n]
		if err != nil {
			if e := c.ioError(err); e != endNone {
				return e
			}
		}
	}
}

// startStream begins the response: header and first chunk go out at once.
func (c *conn) startStream(name string) {
	c.phase, c.name, c.next = phaseStream, name, 0
	c.getBuf()
	b := (*c.bufp)[:len(okHeader)+c.s.chunk]
	copy(b, okHeader)
	stream.Fill(c.name, c.next, b[len(okHeader):])
	c.next += int64(c.s.chunk)
	c.pending = b
}

// okHeaderBytes is okHeader, for pending; never written to.
var okHeaderBytes = []byte(okHeader)

// echoLoop serves phaseEcho: it writes what it owes, then reads the next
// request and answers it. Its goroutine never parks: a Freeze interrupts
// its Read or Write as it does a busy streaming connection's, and the
// state carries the part of a request read so far, the reply not yet
// written and the next sequence number, so that across a handoff no
// request goes unanswered or is answered twice.
func (c *conn) echoLoop() end {
	e := c.echo
	for {
		for len(c.pending) > 0 {
			n, err := c.nc.Write(c.pending)
			c.pending = c.pending[n:]
			c.s.bytesSent.Add(int64(n))
			if err != nil {
				if end := c.ioError(err); end != endNone {
					return end
				}
			}
		}
		if c.s.stopping.Load() {
			return endStop
		}
		if e.n == echoRequestLen {
			seq := e.seq
			for i := echoSeqDigits - 1; i >= 0; i-- {
				e.out[i] = byte('0' + seq%10)
				seq /= 10
			}
			e.out[echoSeqDigits] = ' '
			copy(e.out[echoSeqDigits+1:], e.in[:])
			e.seq = (e.seq + 1) % echoMaxSeq
			e.n = 0
			c.pending = e.out[:]
			continue
		}
		c.markResumed()
		n, err := c.nc.Read(e.in[e.n:])
		e.n += n
		if err != nil {
			if end := c.ioError(err); end != endNone {
				return end
			}
		}
	}
}

// writeLoop writes pending bytes and, in phaseStream, one chunk per tick.
func (c *conn) writeLoop() end {
	if c.phase == phaseStream && c.timer == nil {
		if c.due.IsZero() {
			c.due = time.Now().Add(c.s.cfg.Tick)
		}
		c.timer = time.NewTimer(time.Until(c.due))
	}
	// dueNow: produce a chunk before parking, because it fell due during
	// the handoff that brought the connection here, or during a freeze of
	// it that was called off. Set only while the goroutine is busy.
	dueNow := c.phase == phaseStream && !time.Now().Before(c.due)
	for {
		for len(c.pending) > 0 {
			n, err := c.nc.Write(c.pending)
			c.pending = c.pending[n:]
			c.s.bytesSent.Add(int64(n))
			if err != nil {
				if e := c.ioError(err); e != endNone {
					return e
				}
			}
		}
		c.releaseBuf()
		if c.phase == phaseClosing {
			return endDone
		}
		if c.s.stopping.Load() {
			return endStop
		}
		if dueNow {
			dueNow = false
			c.produce()
			c.nextDue()
			continue
		}
		c.park()
		select {
		case <-c.timer.C:
			if c.s.frozen.Load() > 0 {
				// A migration is freezing this process's connections:
				// stay parked rather than take the CPU the freeze needs
				// for bytes that the freeze would only have to carry
				// over. The chunk stays due: it goes with the state, or
				// right after a Resume, or a tick later at the latest.
				c.timer.Reset(c.s.cfg.Tick)
				continue
			}
			if c.unpark() {
				if e := c.outcome(); e != endNone {
					return e
				}
			}
			c.produce()
			c.nextDue()
		case req := <-c.ctl:
			// The Freeze that sent it found the goroutine busy, so the
			// state was not taken while parked.
			c.unpark()
			if e := c.frozen(req); e != endNone {
				return e
			}
			dueNow = c.phase == phaseStream && !time.Now().Before(c.due)
		case moved := <-c.after:
			// Only a freeze taken while parked ends here.
			c.unpark()
			if moved {
				return endMoved
			}
			dueNow = c.phase == phaseStream && !time.Now().Before(c.due)
		case <-c.s.stop:
			if c.unpark() {
				// Frozen: the SDK still owes this connection an outcome.
				if e := c.outcome(); e != endNone {
					return e
				}
				continue
			}
			return endStop
		}
	}
}

// nextDue moves the due time one tick on and re-arms the timer. A
// connection more than a tick behind (its client reads slower than the
// rate, or the process was starved) drops the ticks it missed: the rate
// is an upper bound.
func (c *conn) nextDue() {
	now := time.Now()
	c.due = c.due.Add(c.s.cfg.Tick)
	if c.due.Before(now.Add(-c.s.cfg.Tick)) {
		c.due = now.Add(c.s.cfg.Tick)
	}
	c.timer.Reset(c.due.Sub(now))
}

// markResumed reports, once, that an imported connection carries on:
// it has written what it owed and waits for its next tick, or waits for
// the rest of its request, or has ended.
func (c *conn) markResumed() {
	if c.resumed != nil {
		c.resumed()
		c.resumed = nil
	}
}

// park says the goroutine is waiting between ticks with its fields at
// rest, so a Freeze may take the state without waking it.
func (c *conn) park() {
	c.markResumed()
	c.mu.Lock()
	// Under mu: a goroutine that stays parked through a freeze (its tick
	// came while frozen) parks again, and the idle Freeze may have taken
	// the buffer; it needs no new one until it is resumed.
	if c.stateBuf == nil && !c.frozenIdle {
		c.stateBuf = make([]byte, 1, 32+len(c.name))
		c.stateBuf[0] = stateVersion // touches its page now, not in a freeze
	}
	c.busy = false
	c.mu.Unlock()
}

// unpark ends parking and reports whether a Freeze took the state
// meanwhile; if so the goroutine must wait for the outcome before it
// touches anything.
func (c *conn) unpark() (frozen bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.busy = true
	frozen = c.frozenIdle
	c.frozenIdle = false
	return frozen
}

// outcome waits for the end of a freeze: Resume (endNone), Moved, or the
// SDK's closing, after which it calls no more hooks.
func (c *conn) outcome() end {
	select {
	case moved := <-c.after:
		if moved {
			return endMoved
		}
		return endNone
	case <-c.s.released:
		return endStop
	}
}

// produce generates the next chunk of the body into pending.
func (c *conn) produce() {
	c.getBuf()
	b := (*c.bufp)[:c.s.chunk]
	stream.Fill(c.name, c.next, b)
	c.next += int64(len(b))
	c.pending = b
}

// ioError handles an error from Read or Write. A timeout while a Freeze is
// under way means "frozen mid-I/O": serve the freeze, and carry on
// (endNone) if it is resumed.
func (c *conn) ioError(err error) end {
	timeout := errors.Is(err, os.ErrDeadlineExceeded)
	if timeout && c.freezing.Load() {
		select {
		case req := <-c.ctl:
			return c.frozen(req)
		case <-c.s.stop:
			return endStop
		}
	}
	if timeout && c.s.stopping.Load() {
		return endStop
	}
	if clientGone(err) {
		return endDone
	}
	c.s.logf("streamer: connection from %s: %v", c.nc.RemoteAddr(), err)
	return endError
}

// encodeState is the state record of the connection's fields.
func (c *conn) encodeState() []byte {
	st := connState{Phase: c.phase, Request: c.req, Name: c.name, Next: c.next, Unsent: c.pending}
	if c.phase == phaseStream && !c.due.IsZero() {
		st.Due = c.due.UnixNano()
	}
	if c.phase == phaseEcho {
		st.Seq, st.Request = c.echo.seq, c.echo.in[:c.echo.n]
	}
	b := c.stateBuf
	c.stateBuf = nil
	if need := 32 + len(c.req) + len(c.name) + len(c.pending); cap(b) < need {
		b = make([]byte, 0, need)
	}
	return appendState(b[:0], &st)
}

// frozen answers a freeze request and waits for its outcome.
func (c *conn) frozen(req *freezeReq) end {
	req.reply <- c.encodeState()
	return c.outcome()
}

func (c *conn) getBuf() {
	if c.bufp == nil {
		c.bufp = c.s.bufs.Get().(*[]byte)
	}
}

// releaseBuf returns the chunk buffer to the pool; pending must not alias it.
func (c *conn) releaseBuf() {
	if c.bufp != nil {
		c.pending = nil
		c.s.bufs.Put(c.bufp)
		c.bufp = nil
	}
}

func (c *conn) releaseReq() {
	if c.reqBuf != nil {
		c.s.reqBufs.Put(c.reqBuf)
		c.reqBuf, c.req, c.scanned = nil, nil, 0
	}
}

// clientGone reports whether err just means that the peer went away.
func clientGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, io.ErrUnexpectedEOF)
}
