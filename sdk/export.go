package handoff

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/handoff-dev/handoff/wire"
)

// startControl runs the loop that answers the agent: Prepare starts an
// outgoing migration, Abort calls it off.
func (p *Process) startControl() {
	p.mu.Lock()
	if p.agent == nil || p.controlRun {
		p.mu.Unlock()
		return
	}
	p.controlRun = true
	p.mu.Unlock()
	go p.control()
}

func (p *Process) control() {
	for {
		m, err := p.agent.Recv()
		if err != nil {
			p.mu.Lock()
			gone := p.agentGone
			p.agentGone = true
			x := p.export
			p.mu.Unlock()
			if x != nil {
				x.agentEvent(wire.Failure{Code: wire.CodeAgentClosed, Reason: fmt.Sprintf("lost the agent: %v", err)})
			}
			if !gone {
				p.logf("lost the agent (%v); serving on, but this process can no longer be migrated", err)
			}
			return
		}
		switch m.Type {
		case wire.TypePrepare:
			p.onPrepare(m)
		case wire.TypeAbort:
			m.CloseFDs()
			var f wire.Failure
			if err := f.Unmarshal(m.Body); err != nil {
				f = wire.Failure{Code: wire.CodeMalformed, Reason: err.Error()}
			}
			p.mu.Lock()
			x := p.export
			p.mu.Unlock()
			if x != nil && x.txid == m.TxID {
				x.agentEvent(f)
			}
		case wire.TypeError:
			m.CloseFDs()
			var f wire.Failure
			_ = f.Unmarshal(m.Body)
			p.logf("agent reported an error: %v", f)
		default:
			m.CloseFDs()
			p.logf("ignored unexpected %v message from the agent", m.Type)
		}
	}
}

func (p *Process) refuse(txid uint64, code uint32, reason string) {
	_ = p.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: txid}, Body: wire.Failure{Code: code, Reason: reason}.Marshal()})
}

func (p *Process) onPrepare(m wire.Msg) {
	var prep wire.Prepare
	if err := prep.Unmarshal(m.Body); err != nil || len(m.FDs) != 1 {
		m.CloseFDs()
		p.refuse(m.TxID, wire.CodeMalformed, fmt.Sprintf("prepare with %d descriptors: %v", len(m.FDs), err))
		return
	}
	pair, err := wire.FromFD(m.FDs[0], "handoff-pair")
	if err != nil {
		p.refuse(m.TxID, wire.CodeMalformed, err.Error())
		return
	}
	p.mu.Lock()
	if p.moved || p.export != nil {
		p.mu.Unlock()
		pair.Close()
		p.refuse(m.TxID, wire.CodeBusy, "this process is already migrating or has moved")
		return
	}
	x := &exportTx{
		p:       p,
		txid:    m.TxID,
		prep:    prep,
		pair:    pair,
		agentEv: make(chan wire.Failure, 2),
		lateCh:  make(chan *Tracked, 1024),
	}
	p.export = x
	p.mu.Unlock()
	go x.run()
}

// exportTx is one outgoing migration: the source's side of the transaction.
type exportTx struct {
	p       *Process
	txid    uint64
	prep    wire.Prepare
	pair    *wire.Conn
	agentEv chan wire.Failure
	lateCh  chan *Tracked

	mu        sync.Mutex
	decided   bool
	collect   bool
	frozen    []*Tracked
	listeners []*listener
	packets   []*packetConn
}

func (x *exportTx) agentEvent(f wire.Failure) {
	select {
	case x.agentEv <- f:
	default:
	}
}

// late adds a connection tracked while the export is collecting. Called
// with p.mu held.
func (x *exportTx) late(t *Tracked) {
	x.mu.Lock()
	collect := x.collect
	x.mu.Unlock()
	if collect {
		select {
		case x.lateCh <- t:
		default:
		}
	}
}

// freezeWorkers bounds the goroutines calling Freeze hooks at once.
const freezeWorkers = 128

type frozenConn struct {
	t     *Tracked
	state []byte
	err   error
}

// item is one descriptor on its way into a batch.
type item struct {
	entry wire.Entry
	fd    int
}

// batcher packs items into Batch messages of at most MaxFDs descriptors,
// moving the states into a memfd when they do not fit in the body.
type batcher struct {
	x       *exportTx
	items   []item
	size    int
	seq     uint32
	sum     wire.Summary
	entries []wire.Entry
	fds     []int
}

func (b *batcher) add(it item) error {
	sz := 8 + len(it.entry.Key) + len(it.entry.State)
	if len(b.items) == wire.MaxFDs || (len(b.items) == wire.MaxFDs-1 && b.size+sz > wire.MaxBody) {
		if err := b.flush(); err != nil {
			return err
		}
	}
	if len(b.items) == 0 {
		b.size = 8
	}
	b.items = append(b.items, it)
	b.size += sz
	switch it.entry.Kind {
	case wire.KindListener:
		b.sum.Listeners++
	case wire.KindConn:
		b.sum.Conns++
	case wire.KindPacket:
		b.sum.Packets++
	}
	b.sum.StateBytes += uint64(len(it.entry.State))
	return nil
}

func (b *batcher) flush() error {
	if len(b.items) == 0 {
		return nil
	}
	b.entries = b.entries[:0]
	b.fds = b.fds[:0]
	for _, it := range b.items {
		b.entries = append(b.entries, it.entry)
		b.fds = append(b.fds, it.fd)
	}
	body, flags, states := wire.MarshalBatch(b.entries)
	memfd := -1
	if flags&wire.BatchMemfd != 0 {
		var err error
		memfd, err = wire.NewStateMemfd(states)
		if err != nil {
			return err
		}
		b.fds = append(b.fds, memfd)
	}
	err := b.x.p.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeBatch, Flags: flags, TxID: b.x.txid, Seq: b.seq}, Body: body, FDs: b.fds})
	if memfd >= 0 {
		wire.CloseAll([]int{memfd})
	}
	if err != nil {
		return fmt.Errorf("send batch %d: %w", b.seq, err)
	}
	b.seq++
	b.sum.Batches++
	b.items = b.items[:0]
	return nil
}

// run is the source's transaction: freeze, export in batches, then wait
// for the decision and commit or abort.
func (x *exportTx) run() {
	p := x.p
	step("prepare")
	start := time.Now()
	freezeStart := wire.Monotonic()
	deadline := start.Add(time.Duration(x.prep.TimeoutMS) * time.Millisecond)
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()

	p.mu.Lock()
	if x.prep.What&wire.MoveListeners != 0 {
		for l := range p.listeners {
			x.listeners = append(x.listeners, l)
		}
	}
	if x.prep.What&wire.MovePackets != 0 {
		for c := range p.packets {
			x.packets = append(x.packets, c)
		}
	}
	p.mu.Unlock()

	for _, l := range x.listeners {
		l.freeze(l.ln.(deadliner))
	}
	for _, c := range x.packets {
		c.freeze(readDeadliner{c.PacketConn})
	}

	var conns []*Tracked
	p.mu.Lock()
	if x.prep.What&wire.MoveConns != 0 {
		p.waitAccepted()
		conns = make([]*Tracked, 0, len(p.tracked))
		for t := range p.tracked {
			conns = append(conns, t)
		}
		x.mu.Lock()
		x.collect = true
		x.mu.Unlock()
	}
	p.mu.Unlock()

	b := &batcher{x: x, items: make([]item, 0, wire.MaxFDs)}
	fail := func(code uint32, format string, args ...any) {
		x.abort(wire.Failure{Code: code, Reason: fmt.Sprintf(format, args...)}, true)
	}
	for _, l := range x.listeners {
		fd, err := rawFD(l.raw)
		if err == nil {
			err = b.add(item{entry: wire.Entry{Kind: wire.KindListener, Key: l.key}, fd: fd})
		}
		if err != nil {
			fail(wire.CodeExport, "export listener %s: %v", l.key, err)
			return
		}
	}
	for _, c := range x.packets {
		fd, err := rawFD(c.raw)
		if err == nil {
			err = b.add(item{entry: wire.Entry{Kind: wire.KindPacket, Key: c.key}, fd: fd})
		}
		if err != nil {
			fail(wire.CodeExport, "export packet socket %s: %v", c.key, err)
			return
		}
	}

	// A fixed pool of goroutines calls the Freeze hooks: spawning one per
	// connection costs more than the hooks at thousands of connections.
	results := make(chan frozenConn, len(conns)+cap(x.lateCh))
	work := make(chan *Tracked, len(conns)+cap(x.lateCh))
	defer close(work)
	for range min(max(len(conns), 1), freezeWorkers) {
		go func() {
			for t := range work {
				x.freezeOne(t, results)
			}
		}()
	}
	pending := 0
	freeze := func(t *Tracked) {
		pending++
		work <- t
	}
	for _, t := range conns {
		freeze(t)
	}
	for pending > 0 {
		select {
		case r := <-results:
			pending--
			if errors.Is(r.err, ErrSkip) {
				continue
			}
			if r.err != nil {
				fail(wire.CodeExport, "freeze connection %v: %v", r.t.conn.RemoteAddr(), r.err)
				return
			}
			fd, err := r.t.fd()
			if err == nil {
				// The family lets the target adopt the socket without asking the kernel.
				err = b.add(item{entry: wire.Entry{Kind: wire.KindConn, Key: r.t.family, State: r.state}, fd: fd})
			}
			if err != nil {
				fail(wire.CodeExport, "export connection %v: %v", r.t.conn.RemoteAddr(), err)
				return
			}
		case t := <-x.lateCh:
			freeze(t)
		case f := <-x.agentEv:
			// The agent waits for the source's final word after it asked
			// for an abort: confirm it (skipped if the agent is gone).
			x.abort(f, true)
			return
		case <-timer.C:
			fail(wire.CodeDeadline, "deadline of %dms passed while freezing connections", x.prep.TimeoutMS)
			return
		}
	}
	x.mu.Lock()
	x.collect = false
	x.mu.Unlock()
	if err := b.flush(); err != nil {
		fail(wire.CodeExport, "%v", err)
		return
	}
	b.sum.FreezeStartNS = freezeStart
	b.sum.ExportDoneNS = wire.Monotonic()
	if err := p.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeExported, TxID: x.txid}, Body: b.sum.Marshal()}); err != nil {
		fail(wire.CodeAgentClosed, "send exported: %v", err)
		return
	}

	step("exported")
	pairMsg := make(chan error, 1)
	go func() {
		m, err := x.pair.Recv()
		if err == nil {
			m.CloseFDs()
			if m.Type != wire.TypeReady {
				err = fmt.Errorf("%w: %v on the pair, expected ready", wire.ErrMalformed, m.Type)
			}
		}
		pairMsg <- err
	}()
	select {
	case err := <-pairMsg:
		if err != nil {
			fail(wire.CodeTargetLost, "target went away before it was ready: %v", err)
			return
		}
		step("ready")
		x.commit(b.sum)
	case f := <-x.agentEv:
		x.abort(f, true) // confirm, as above
	case <-timer.C:
		fail(wire.CodeDeadline, "deadline of %dms passed waiting for the target to be ready", x.prep.TimeoutMS)
	}
}

// freezeOne calls one connection's Freeze hook. If the transaction was
// decided while the hook ran, it undoes the freeze itself.
func (x *exportTx) freezeOne(t *Tracked, out chan<- frozenConn) {
	x.mu.Lock()
	decided := x.decided
	x.mu.Unlock()
	if decided {
		return
	}
	state, err := t.hooks.Freeze()
	x.mu.Lock()
	if x.decided {
		x.mu.Unlock()
		if err == nil {
			t.hooks.Resume()
		}
		return
	}
	if err == nil {
		x.frozen = append(x.frozen, t)
	}
	x.mu.Unlock()
	out <- frozenConn{t: t, state: state, err: err}
}

// decide fixes the outcome once; it returns the frozen connections only
// to the first caller.
func (x *exportTx) decide() ([]*Tracked, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.decided {
		return nil, false
	}
	x.decided = true
	return x.frozen, true
}

// commit tells the target to serve, then lets go of every copy.
func (x *exportTx) commit(sum wire.Summary) {
	p := x.p
	frozen, ok := x.decide()
	if !ok {
		return
	}
	if err := x.pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeCommit, TxID: x.txid}}); err != nil {
		// The target died after Ready: nobody else holds the sockets,
		// so this process keeps serving them.
		x.undo(frozen, wire.Failure{Code: wire.CodeTargetLost, Reason: fmt.Sprintf("target went away after ready: %v", err)}, true)
		return
	}
	x.pair.Close()
	p.mu.Lock()
	p.moved = true
	p.export = nil
	for _, t := range frozen {
		delete(p.tracked, t)
	}
	p.mu.Unlock()
	// The decision is made: say so before the slower work of closing.
	_ = p.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeCommitted, TxID: x.txid}, Body: wire.Stamp{MonoNS: wire.Monotonic()}.Marshal()})
	for _, l := range x.listeners {
		l.markMoved()
		setUnlink(l.ln, false)
		l.ln.Close()
	}
	for _, c := range x.packets {
		c.markMoved()
		c.PacketConn.Close()
	}
	// Imported connections that never reached the poller are closed
	// together: their descriptors arrived in batches, so they are mostly
	// consecutive numbers, one close_range per run.
	var fds []int
	for _, t := range frozen {
		if t.hooks.Moved != nil {
			t.hooks.Moved()
		}
		if t.sc != nil {
			if fd, ok := t.sc.release(); ok {
				fds = append(fds, fd)
				continue
			}
		}
		t.conn.Close()
	}
	slices.Sort(fds)
	wire.CloseAll(fds)
	p.logf("moved %d listeners, %d packet sockets and %d connections to the new process", sum.Listeners, sum.Packets, sum.Conns)
	close(p.done)
}

// abort resumes everything; tell says whether the agent still needs to
// hear why.
func (x *exportTx) abort(f wire.Failure, tell bool) {
	frozen, ok := x.decide()
	if !ok {
		return
	}
	x.undo(frozen, f, tell)
}

func (x *exportTx) undo(frozen []*Tracked, f wire.Failure, tell bool) {
	p := x.p
	_ = x.pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: x.txid}, Body: f.Marshal()})
	x.pair.Close()
	for _, l := range x.listeners {
		l.thaw(l.ln.(deadliner))
	}
	for _, c := range x.packets {
		c.thaw(readDeadliner{c.PacketConn})
	}
	for _, t := range frozen {
		t.hooks.Resume()
	}
	p.mu.Lock()
	p.export = nil
	gone := p.agentGone
	p.mu.Unlock()
	if tell && !gone {
		_ = p.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: x.txid}, Body: f.Marshal()})
	}
	p.logf("migration %d aborted, serving on: %v", x.txid, f)
}

// readDeadliner freezes only the reading side of a packet socket.
type readDeadliner struct{ pc net.PacketConn }

func (r readDeadliner) SetDeadline(t time.Time) error { return r.pc.SetReadDeadline(t) }
