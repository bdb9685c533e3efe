package handoff

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/handoff-dev/handoff/wire"
)

// incoming is a handoff this process is receiving, from Begin until Ready
// finishes it.
type incoming struct {
	p     *Process
	agent *wire.Conn // the session Begin came on
	txid  uint64
	begin wire.Begin
	pair  *wire.Conn

	mu        sync.Mutex
	listeners map[string]net.Listener
	packets   map[string]net.PacketConn
	conns     []Imported // appended to by the adopter until End
	err       error
	errCode   wire.Code      // wire code for err
	bi        wire.BatchInfo // reused for every batch
	si        wire.SealInfo  // reused for every seal

	// precopy is set by BeginCopy: copies arrive first, held in copies
	// (by copy index) untouched until a Seal's verdict moves each into
	// conns, listeners or packets, or closes it. The adopter's alone
	// until End.
	precopy bool
	copies  []heldCopy
	got     wire.Tally // what arrived, the adopter's until End

	releaseGC func() // ends the collector's hold taken at Begin

	// wake interrupts the receive loop's wait for the agent, so that a
	// failure in the adopter aborts at once rather than at the next
	// message. Set before the adopter starts.
	wake func()

	// jobs feeds the adopter goroutine until stopAdopter; adopted is
	// closed when it has finished.
	jobs    chan wire.Msg
	adopted chan struct{}

	res *reserve // memory prepared in standby, or nil

	gates   []*sockGate
	onAbort []func()

	// deadline is when the transaction's time runs out, counted from
	// Begin; the source's own deadline, counted from Prepare, is earlier.
	deadline time.Time

	// ended is set once End arrived: the agent sends nothing more on
	// the session for this transaction.
	ended bool
}

// heldCopy is a pre-copied socket the target holds without touching it
// until its verdict: exactly one of conn, ln and pc is set.
type heldCopy struct {
	key  string
	conn *sockConn
	ln   net.Listener
	pc   net.PacketConn
}

// close drops the copy: the source keeps the socket.
func (h *heldCopy) close() {
	switch {
	case h.conn != nil:
		if fd, ok := h.conn.release(); ok {
			wire.CloseAll([]int{fd})
		} else {
			h.conn.Close()
		}
	case h.ln != nil:
		if ul, ok := h.ln.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false)
		}
		h.ln.Close()
	case h.pc != nil:
		h.pc.Close()
	}
	*h = heldCopy{}
}

// abortDrainBound bounds how long a target that called a handoff off
// keeps reading its agent session. The agent answers the Abort with one
// of its own once the source confirmed, usually within milliseconds.
const abortDrainBound = 2 * time.Second

// readyGrace is how long past the transaction's deadline a target that
// said Ready waits for the source's decision. The source decides by its
// own, earlier deadline; the grace keeps a Commit sent just in time from
// meeting a target that already gave up.
const readyGrace = time.Second

func (in *incoming) claimListener(k string) net.Listener {
	ln := in.listeners[k]
	delete(in.listeners, k)
	return ln
}

func (in *incoming) claimPacket(k string) net.PacketConn {
	pc := in.packets[k]
	delete(in.packets, k)
	return pc
}

// closeAll drops everything received: the old process still has its
// copies, so closing ours touches no client.
func (in *incoming) closeAll() {
	in.mu.Lock()
	defer in.mu.Unlock()
	for k, ln := range in.listeners {
		if ul, ok := ln.(*net.UnixListener); ok {
			ul.SetUnlinkOnClose(false)
		}
		ln.Close()
		delete(in.listeners, k)
	}
	for k, pc := range in.packets {
		pc.Close()
		delete(in.packets, k)
	}
	var fds []int
	for _, ic := range in.conns {
		if sc, ok := ic.Conn.(*sockConn); ok {
			if fd, ok := sc.release(); ok {
				fds = append(fds, fd)
				continue
			}
		}
		ic.Conn.Close()
	}
	wire.CloseAll(fds) // in arrival order: mostly consecutive numbers
	in.conns = nil
	for i := range in.copies {
		in.copies[i].close()
	}
	in.copies = nil
	for _, f := range in.onAbort {
		f()
	}
	in.onAbort = nil
	for _, g := range in.gates {
		g.open()
	}
	if in.pair != nil {
		in.pair.Close()
	}
}

// receive is the target's transaction up to End, top-down: awaitBegin,
// then transfer (every batch and seal until End). Any failure is reported
// to the agent and returned wrapped in ErrAborted.
func (p *Process) receive(ctx context.Context, until time.Time) (_ *incoming, retErr error) {
	in, err := p.awaitBegin(ctx, until)
	if err != nil {
		return nil, err
	}
	// The pause runs on until Ready: hold the collector that long (finish
	// releases it), or until this returns without a handoff.
	in.releaseGC = holdGC(gcHoldMax)
	defer func() {
		if retErr != nil {
			in.endGCHold()
		}
	}()
	if err := in.transfer(ctx, p); err != nil {
		return nil, err
	}
	return in, nil
}

// errLostBeforeBegin: the agent session ended while the process waited
// for Begin; nothing was received, and the process may join again.
var errLostBeforeBegin = errors.New("lost the agent before a handoff began")

// awaitBegin waits in standby, until until, for Begin and sets up the
// transaction.
func (p *Process) awaitBegin(ctx context.Context, until time.Time) (*incoming, error) {
	c := p.agent
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	c.SetReadDeadline(until)
	m, err := c.Recv()
	c.SetReadDeadline(time.Time{})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("standby: %w", ctx.Err())
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("%w after %v", ErrStandbyTimeout, p.opts.StandbyTimeout)
		}
		if errors.Is(err, wire.ErrClosed) {
			return nil, fmt.Errorf("%w: %w", errLostBeforeBegin, err)
		}
		return nil, fmt.Errorf("%w: waiting for begin: %w", ErrAborted, err)
	}
	if m.Type != wire.TypeBegin || len(m.FDs) != 1 {
		m.CloseFDs()
		return nil, fmt.Errorf("%w: expected begin with one descriptor, got %v with %d", ErrAborted, m.Type, len(m.FDs))
	}
	in := &incoming{p: p, agent: c, txid: m.TxID, listeners: map[string]net.Listener{}, packets: map[string]net.PacketConn{},
		precopy: m.Flags&wire.BeginCopy != 0 && c.Version() >= 3}
	// The reserve serves one handoff: a later one (after an abort) gets
	// fresh memory.
	in.res, p.res = p.res, nil
	in.conns = in.res.importedSlice()
	if err := in.begin.Unmarshal(m.Body); err != nil {
		m.CloseFDs()
		return nil, p.abortIncoming(in, wire.CodeMalformed, err)
	}
	in.pair, err = wire.FromFD(m.FDs[0], "handoff-pair")
	if err != nil {
		return nil, p.abortIncoming(in, wire.CodeMalformed, err)
	}
	in.deadline = time.Now().Add(time.Duration(in.begin.TimeoutMS) * time.Millisecond)
	step("begin")
	return in, nil
}

// transfer takes in every batch and seal until End, each through
// onMessage. Batches and seals are decoded and adopted on a goroutine of
// their own (adopter), so that receiving the next one (the kernel
// installing its descriptors) overlaps adopting this one when a second
// core is free: the target is the last stage of the transfer, and what it
// does after the last message arrives is all pause.
//
//	message        what happens
//	Batch, Seal    to the adopter (Seal only in a pre-copy)
//	End            stop the adopter; check the counts: done
//	Abort          drop everything: ErrAborted
//	anything else  UnexpectedMessage
//
// A failure of the adopter, the deadline, losing the agent or ctx ends it
// with an Abort to the agent.
func (in *incoming) transfer(ctx context.Context, p *Process) error {
	c := in.agent
	// The agent enforces the deadline and says so with Abort; this
	// process's own, readyGrace later, is for an agent that went quiet.
	c.SetReadDeadline(in.deadline.Add(readyGrace))
	defer c.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	in.wake = func() { c.SetReadDeadline(time.Unix(1, 0)) }
	in.jobs = make(chan wire.Msg, 8)
	in.adopted = make(chan struct{})
	go in.adopter()
	defer in.stopAdopter()
	var bodyAlloc func(int) []byte
	if in.res != nil {
		bodyAlloc = in.res.body
	}
	for {
		m, err := c.RecvWith(bodyAlloc)
		if err != nil {
			if code, ferr := in.failure(); code != 0 {
				// The adopter failed and woke this wait.
				return in.abort(code, ferr)
			}
			if ctx.Err() != nil {
				return in.abort(wire.CodeCancelled, ctx.Err())
			}
			if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().After(in.deadline) {
				return in.abort(wire.CodeDeadline, fmt.Errorf("the agent sent nothing more within the deadline of %dms: %w", in.begin.TimeoutMS, err))
			}
			return in.abort(wire.CodeImport, fmt.Errorf("receive from agent: %w", err))
		}
		if done, err := in.onMessage(m); done || err != nil {
			return err
		}
	}
}

// onMessage handles one message from the agent during the transfer and
// reports whether the transfer is over (err nil: End arrived and checked).
func (in *incoming) onMessage(m wire.Msg) (done bool, err error) {
	if m.TxID != in.txid {
		m.CloseFDs()
		return true, in.abort(wire.CodeUnexpected, fmt.Errorf("%v for transaction %d during %d", m.Type, m.TxID, in.txid))
	}
	switch m.Type {
	case wire.TypeBatch, wire.TypeSeal:
		if m.Type == wire.TypeSeal && !in.precopy {
			m.CloseFDs()
			return true, in.abort(wire.CodeUnexpected, fmt.Errorf("seal in a transfer that is no pre-copy"))
		}
		if code, err := in.failure(); code != 0 {
			m.CloseFDs()
			return true, in.abort(code, err)
		}
		in.jobs <- m
		return false, nil
	case wire.TypeEnd:
		m.CloseFDs()
		var sum wire.Summary
		if err := sum.Unmarshal(m.Body); err != nil {
			return true, in.abort(wire.CodeMalformed, err)
		}
		in.ended = true
		in.stopAdopter()
		if code, err := in.failure(); code != 0 {
			return true, in.abort(code, err)
		}
		step("end")
		if err := in.got.Check(sum); err != nil {
			return true, in.abort(wire.CodeMalformed, fmt.Errorf("end: %w", err))
		}
		return true, nil
	case wire.TypeAbort:
		m.CloseFDs()
		var f wire.Failure
		_ = f.Unmarshal(m.Body)
		in.stopAdopter()
		in.closeAll()
		return true, fmt.Errorf("%w by the agent: %v", ErrAborted, f)
	default:
		m.CloseFDs()
		return true, in.abort(wire.CodeUnexpected, fmt.Errorf("unexpected %v during a handoff", m.Type))
	}
}

// adopter decodes and adopts the batches and seals of the transfer, in
// order, until stopAdopter; after a failure it only closes what arrives.
func (in *incoming) adopter() {
	defer close(in.adopted)
	for m := range in.jobs {
		if code, _ := in.failure(); code != 0 {
			m.CloseFDs()
			continue
		}
		if m.Type == wire.TypeSeal {
			in.applySeal(m)
			continue
		}
		bi := &in.bi
		err := wire.DecodeBatchInto(bi, m.Body, len(m.FDs))
		if err == nil && bi.Copy && !in.precopy {
			err = fmt.Errorf("%w: a copy batch in a transfer that is no pre-copy", wire.ErrMalformed)
		}
		if err == nil {
			err = in.got.Batch(bi)
		}
		if err != nil {
			m.CloseFDs()
			in.fail(wire.CodeMalformed, err)
			continue
		}
		step("batch")
		if bi.Copy {
			in.holdCopies(*bi, m.FDs)
		} else {
			in.adopt(*bi, m.FDs)
		}
		step("adopted")
	}
}

// stopAdopter waits for the adopter to finish what it was given.
func (in *incoming) stopAdopter() {
	if in.jobs != nil {
		close(in.jobs)
		<-in.adopted
		in.jobs = nil
	}
}

// abort stops the adopter, drops what arrived and tells the agent why.
func (in *incoming) abort(code wire.Code, err error) error {
	in.stopAdopter()
	return in.p.abortIncoming(in, code, err)
}

// abortIncoming drops what arrived and tells the agent why.
func (p *Process) abortIncoming(in *incoming, code wire.Code, cause error) error {
	f := wire.Failure{Code: code, Reason: cause.Error()}
	if in.pair != nil {
		// The source learns of the close on the pair, maybe before the
		// agent reads our Abort: the reason goes there too, so that the
		// source does not report a lost target instead.
		_ = in.pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: in.txid}, Body: f.Marshal()})
	}
	in.closeAll()
	err := in.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: in.txid}, Body: f.Marshal()})
	p.logf("incoming handoff %d aborted: %v", in.txid, f)
	if err == nil && !in.ended {
		drainAgent(in.agent, in.txid)
	}
	return fmt.Errorf("%w: %v", ErrAborted, f)
}

// drainAgent reads and discards what the agent still sends for a
// transaction this process called off, until the agent ends it (Abort),
// nothing more can come (End, a closed session) or abortDrainBound passes.
// Closing the session with batches still queued unread would make the
// kernel reset the agent's end, and the agent would then see ECONNRESET or
// EPIPE before it reads our Abort and report a lost target instead of the
// real reason.
func drainAgent(c *wire.Conn, txid uint64) {
	c.SetReadDeadline(time.Now().Add(abortDrainBound))
	defer c.SetReadDeadline(time.Time{})
	for {
		m, err := c.Recv()
		if err != nil {
			// A message the kernel truncated (this process may still be
			// out of descriptors) or that does not decode is dropped and
			// its descriptors closed by Recv; a socket error ends the
			// drain.
			var oe *net.OpError
			if errors.As(err, &oe) || errors.Is(err, wire.ErrClosed) {
				return
			}
			continue
		}
		m.CloseFDs()
		if m.TxID == txid && (m.Type == wire.TypeAbort || m.Type == wire.TypeEnd) {
			return
		}
	}
}

// endGCHold ends the collector's hold, if there is one.
func (in *incoming) endGCHold() {
	if in.releaseGC != nil {
		in.releaseGC()
	}
}

// fail records the first thing that went wrong while adopting.
func (in *incoming) fail(code wire.Code, err error) {
	in.mu.Lock()
	first := in.errCode == 0
	if first {
		in.errCode, in.err = code, err
	}
	in.mu.Unlock()
	if first && in.wake != nil {
		in.wake()
	}
}

// failure is what fail recorded: code 0 if nothing.
func (in *incoming) failure() (wire.Code, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.errCode, in.err
}

// adopt turns one batch's descriptors into net objects. A connection's
// descriptor is owned by its sockConn from then on; every other descriptor
// is closed here, whether adopted (net dups it) or not.
func (in *incoming) adopt(bi wire.BatchInfo, fds []int) {
	defer wire.CloseAll(fds)
	fail := func(err error) { in.fail(wire.CodeImport, err) }
	if bi.Memfd {
		all, err := wire.ReadStateMemfd(fds[len(fds)-1], bi.StateSum)
		if err != nil {
			fail(err)
			return
		}
		wire.SplitStates(&bi, all)
	}
	// One allocation for the batch's connections rather than one each:
	// in a process that just started, fresh heap pages cost a fault each.
	// The batch's memory stays until its last connection is dropped.
	slab := in.res.takeSlab(len(bi.Entries))
	// Only this goroutine appends to in.conns until End.
	in.mu.Lock()
	conns := growImported(in.conns, len(bi.Entries))
	in.mu.Unlock()
	var firstErr error
	for i, e := range bi.Entries {
		if e.Kind == wire.KindConn {
			c := &slab[i]
			c.init(fds[i], e.Key)
			conns = append(conns, Imported{Conn: c, State: e.State})
			fds[i] = -1 // owned by the connection now
			continue
		}
		f := os.NewFile(uintptr(fds[i]), "handoff-socket")
		var err error
		switch e.Kind {
		case wire.KindListener:
			var ln net.Listener
			if ln, err = net.FileListener(f); err == nil {
				in.mu.Lock()
				in.listeners[e.Key] = ln
				in.mu.Unlock()
			}
		case wire.KindPacket:
			var pc net.PacketConn
			if pc, err = net.FilePacketConn(f); err == nil {
				in.mu.Lock()
				in.packets[e.Key] = pc
				in.mu.Unlock()
			}
		}
		f.Close()
		fds[i] = -1
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("adopt descriptor %d of batch (kind %d): %w", i, e.Kind, err)
		}
	}
	in.mu.Lock()
	in.conns = conns
	in.mu.Unlock()
	if firstErr != nil {
		fail(firstErr)
	}
}

// holdCopies takes one copy batch's descriptors, to hold untouched until
// their verdicts. Adopting them now costs the pause nothing: listeners
// and packet sockets become net objects, connections sockConns (which
// make no system call until used).
func (in *incoming) holdCopies(bi wire.BatchInfo, fds []int) {
	defer wire.CloseAll(fds)
	slab := in.res.takeSlab(len(bi.Entries))
	var firstErr error
	for i, e := range bi.Entries {
		h := heldCopy{key: e.Key}
		var err error
		switch e.Kind {
		case wire.KindConn:
			h.conn = &slab[i]
			h.conn.init(fds[i], e.Key)
			fds[i] = -1 // owned by the connection now
		case wire.KindListener:
			f := os.NewFile(uintptr(fds[i]), "handoff-socket")
			h.ln, err = net.FileListener(f)
			f.Close()
			fds[i] = -1
		case wire.KindPacket:
			f := os.NewFile(uintptr(fds[i]), "handoff-socket")
			h.pc, err = net.FilePacketConn(f)
			f.Close()
			fds[i] = -1
		}
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("adopt copy %d (kind %d): %w", len(in.copies), e.Kind, err)
		}
		in.copies = append(in.copies, h) // an empty one if it failed
	}
	if firstErr != nil {
		in.fail(wire.CodeImport, firstErr)
	}
}

// applySeal carries out one Seal's verdicts: a kept copy joins what
// Ready hands out, with its state; a dropped one is closed.
func (in *incoming) applySeal(m wire.Msg) {
	defer m.CloseFDs()
	si := &in.si
	err := wire.DecodeSealInto(si, m.Body, len(m.FDs))
	if err == nil {
		err = in.got.Seal(si) // checks every index, once each
	}
	if err != nil {
		in.fail(wire.CodeMalformed, err)
		return
	}
	step("seal")
	if si.Memfd {
		all, err := wire.ReadStateMemfd(m.FDs[0], si.StateSum)
		if err != nil {
			in.fail(wire.CodeImport, err)
			return
		}
		wire.SplitSealStates(si, all)
	}
	in.mu.Lock()
	conns := growImported(in.conns, len(si.Entries))
	for _, e := range si.Entries {
		h := &in.copies[e.Index]
		if e.Verdict == wire.SealDrop {
			h.close()
			continue
		}
		switch {
		case h.conn != nil:
			conns = append(conns, Imported{Conn: h.conn, State: e.State})
		case h.ln != nil:
			in.listeners[h.key] = h.ln
		case h.pc != nil:
			in.packets[h.key] = h.pc
		}
		*h = heldCopy{}
	}
	in.conns = conns
	in.mu.Unlock()
}

// finish is Ready for a process that received a handoff: tell the source
// we are ready, wait for its decision, and open the gates.
func (in *incoming) finish(p *Process) ([]Imported, error) {
	p.mu.Lock()
	for k := range in.listeners {
		p.logf("inherited listener %s was not claimed by Listen; closing it", k)
	}
	for k := range in.packets {
		p.logf("inherited packet socket %s was not claimed by ListenPacket; closing it", k)
	}
	p.mu.Unlock()
	step("before-ready")
	defer in.endGCHold()
	counts := wire.Summary{Conns: uint32(len(in.conns))}
	sendErr := in.pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeReady, TxID: in.txid}, Body: counts.Marshal()})
	if sendErr != nil {
		// The source closed its end: it decided and left (Abort or
		// Commit is queued on the pair), or it exited after exporting
		// everything. Only what the pair holds tells which, so read it
		// rather than drop live copies the source no longer has.
		p.logf("could not tell the source we are ready (%v); reading what it left on the pair", sendErr)
	}
	// A source that hangs or is stopped must not hold Ready forever. If
	// it wakes later it finds the pair closed: its Commit fails and it
	// resumes.
	in.pair.SetReadDeadline(in.deadline.Add(readyGrace))
	m, err := in.pair.Recv()
	switch {
	case err == nil && m.Type == wire.TypeCommit:
		m.CloseFDs()
	case err == nil && m.Type == wire.TypeAbort:
		m.CloseFDs()
		var f wire.Failure
		_ = f.Unmarshal(m.Body)
		in.closeAll()
		p.logf("incoming handoff %d aborted by the source: %v", in.txid, f)
		return nil, fmt.Errorf("%w by the source: %v", ErrAborted, f)
	case errors.Is(err, wire.ErrClosed):
		// The source exited after exporting everything: its copies are
		// gone, so taking over loses nothing and duplicates nothing.
		p.logf("the source closed the transaction without a decision after exporting everything; taking over")
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, p.abortIncoming(in, wire.CodeDeadline, fmt.Errorf("the source decided nothing within the deadline of %dms: %w", in.begin.TimeoutMS, err))
	default:
		if err == nil {
			m.CloseFDs()
			err = fmt.Errorf("%w: %v on the pair", wire.ErrMalformed, m.Type)
		}
		if sendErr != nil {
			err = fmt.Errorf("tell the source we are ready: %w; then %w", sendErr, err)
		}
		return nil, p.abortIncoming(in, wire.CodeUnexpected, err)
	}
	// Unclaimed sockets are dropped now that they are ours alone.
	in.mu.Lock()
	for k, ln := range in.listeners {
		ln.Close()
		delete(in.listeners, k)
	}
	for k, pc := range in.packets {
		pc.Close()
		delete(in.packets, k)
	}
	conns := in.conns
	in.conns = nil
	in.mu.Unlock()
	in.pair.Close()
	for _, g := range in.gates {
		g.open()
	}
	p.mu.Lock()
	p.in = nil
	p.mu.Unlock()
	step("served")
	_ = in.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeServing, TxID: in.txid}, Body: wire.Stamp{MonoNS: wire.Monotonic()}.Marshal()})
	return conns, nil
}

// growImported makes room for n more elements in s, with populated memory
// (see makePopulated) when it has to move: without a reserve, the slice
// of adopted connections grows batch by batch.
func growImported(s []Imported, n int) []Imported {
	if len(s)+n <= cap(s) {
		return s
	}
	g := makePopulated[Imported](len(s), max(2*cap(s), len(s)+n, 256))
	copy(g, s)
	return g
}
