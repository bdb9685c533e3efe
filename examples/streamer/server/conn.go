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

	"github.com/handoff-dev/handoff/internal/stream"
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
// fields marked "goroutine" below; the hooks talk to it through channels.
//
// Freeze protocol: the Freeze hook sets freezing, then sets a deadline in
// the past on the socket, which makes a Read or Write that is blocked (for
// instance on a client that does not read) return at once with the bytes
// it did transfer. The goroutine accounts for those bytes, sees a timeout
// while freezing is set and waits for the freeze request; if it was idle
// instead, it receives the request in its select. It replies with the
// encoded state and waits for Resume (deadline cleared, carry on) or Moved
// (return without closing).
type conn struct {
	s  *server
	nc net.Conn
	t  *handoff.Tracked

	ctl   chan *freezeReq // unbuffered: a Freeze hands its request to the goroutine
	after chan bool       // buffered(1): true = Moved, false = Resume
	done  chan struct{}   // closed when the goroutine stops serving

	mu       sync.Mutex // orders finished against the start of a Freeze
	finished bool
	freezing atomic.Bool

	// goroutine
	phase   phase
	reqBuf  *[maxRequest]byte
	req     []byte // request bytes read so far (aliases reqBuf or imported state)
	scanned int    // bytes of req already searched for the header end
	name    string
	next    int64  // body offset of the next byte to generate
	pending []byte // produced but not yet written
	bufp    *[]byte
	ticker  *time.Ticker
	catchUp bool // produce a chunk without waiting for the first tick
}

func newConn(s *server, nc net.Conn) *conn {
	return &conn{
		s:     s,
		nc:    nc,
		ctl:   make(chan *freezeReq),
		after: make(chan bool, 1),
		done:  make(chan struct{}),
		phase: phaseRequest,
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
		// The client waited through the handoff: send the next chunk at
		// once instead of a tick later.
		c.catchUp = true
	case phaseClosing:
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
	c.freezing.Store(true)
	_ = c.nc.SetDeadline(time.Now()) // interrupts a blocked Read or Write
	c.mu.Unlock()
	req := &freezeReq{reply: make(chan []byte, 1)}
	select {
	case c.ctl <- req:
	case <-c.done:
		return nil, handoff.ErrSkip
	}
	return <-req.reply, nil
}

// resume is the Resume hook.
func (c *conn) resume() {
	c.mu.Lock()
	if c.s.stopping.Load() {
		_ = c.nc.SetDeadline(time.Now()) // let the goroutine see the shutdown
	} else {
		_ = c.nc.SetDeadline(time.Time{})
	}
	c.freezing.Store(false)
	c.mu.Unlock()
	select {
	case c.after <- false:
	default:
	}
}

// moved is the Moved hook.
func (c *conn) moved() {
	select {
	case c.after <- true:
	default:
	}
}

// interrupt makes a blocked Read or Write return so that the goroutine
// notices the shutdown; a frozen connection is left alone.
func (c *conn) interrupt() {
	c.mu.Lock()
	if !c.freezing.Load() {
		_ = c.nc.SetDeadline(time.Now())
	}
	c.mu.Unlock()
}

// run serves the connection until it ends, is moved or the server stops.
func (c *conn) run() {
	defer c.s.wg.Done()
	e := c.serve()
	if c.ticker != nil {
		c.ticker.Stop()
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
		c.t.Untrack()
	}
	_ = c.nc.Close()
	c.s.finished.Add(1)
}

func (c *conn) serve() end {
	for {
		if c.s.stopping.Load() {
			return endStop
		}
		var e end
		if c.phase == phaseRequest {
			e = c.readRequest()
		} else {
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
			name, resp := parseRequest(c.req[:i])
			c.releaseReq()
			if resp != nil {
				c.s.rejected.Add(1)
				c.phase, c.pending = phaseClosing, resp
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

// writeLoop writes pending bytes and, in phaseStream, one chunk per tick.
func (c *conn) writeLoop() end {
	if c.phase == phaseStream && c.ticker == nil {
		c.ticker = time.NewTicker(c.s.cfg.Tick)
	}
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
		if c.catchUp {
			c.catchUp = false
			c.produce()
			continue
		}
		select {
		case <-c.ticker.C:
			c.produce()
		case req := <-c.ctl:
			if e := c.frozen(req); e != endNone {
				return e
			}
		case <-c.s.stop:
			return endStop
		}
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

// frozen answers a freeze request and waits for its outcome.
func (c *conn) frozen(req *freezeReq) end {
	st := connState{Phase: c.phase, Request: c.req, Name: c.name, Next: c.next, Unsent: c.pending}
	req.reply <- appendState(make([]byte, 0, 32+len(c.req)+len(c.name)+len(c.pending)), &st)
	select {
	case moved := <-c.after:
		if moved {
			return endMoved
		}
		return endNone
	case <-c.s.released:
		// The SDK was closed and will call no more hooks.
		return endStop
	}
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
