package handoff

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
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
	b       *batcher // set by run before any worker starts

	// stopped mirrors decided for the freeze workers' per-connection check.
	stopped atomic.Bool

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
// with p.mu held. The send happens under x.mu so that once run has turned
// collecting off and drained lateCh, no connection can still be on its
// way into it.
func (x *exportTx) late(t *Tracked) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.collect {
		select {
		case x.lateCh <- t:
		default:
		}
	}
}

// Freeze hooks run on worker goroutines that take the connections a
// chunk at a time from a shared list and put what they froze into the
// shared batcher; a sender goroutine sends each batch as soon as it is
// full, so the agent relays batch k while the workers freeze the
// connections of later batches, and a worker never waits for a send.
//
// One worker does it all as long as its hooks return at once, which
// leaves the other cores to the sender, the agent and the target: with a
// worker per core, the agent and the target waited milliseconds for a CPU
// while the freeze raced ahead of them, and the pause grew. A hook that
// has to wait (for its connection's goroutine, caught in the middle of a
// write, say) holds up only its own worker: when no chunk has been taken
// for freezeStall, another worker starts, up to freezeWorkers.
const (
	freezeStall   = 200 * time.Microsecond
	freezeWorkers = 32
)

// item is one descriptor on its way into a batch.
type item struct {
	entry wire.Entry
	fd    int
}

// batcher packs items into Batch messages of at most MaxFDs descriptors,
// moving the states into a memfd when they do not fit in the body. The
// freeze workers add to it and send each batch they seal themselves
// (drain); its sender goroutine (send) sends what close seals, and
// whatever a worker left.
type batcher struct {
	x *exportTx

	mu     sync.Mutex
	items  []item   // the batch being filled
	size   int      // its body size so far
	full   [][]item // sealed batches, in sequence order, not yet sent
	closed bool     // no more items: send what is left, then stop
	sum    wire.Summary
	kick   chan struct{} // cap 1: there is something for the sender
	sent   chan struct{} // closed when the sender stopped
	err    error         // the first failure to send, under drainMu; read after sent

	// drainMu is held while sealed batches are taken and sent, by the
	// sender goroutine or a freeze worker, so that they go out in order.
	drainMu sync.Mutex
	seq     uint32 // the next batch's sequence number, under drainMu

	// sendMu is held by the sender around each send, so that undo can
	// wait for a send in progress before it tells the agent Abort.
	sendMu sync.Mutex

	// Buffers the sender reuses for every batch, and item slices it
	// hands back for sealing (under mu): fresh memory costs a page fault
	// per 4 KiB, which at thousands of connections shows in the pause.
	spare   [][]item
	entries []wire.Entry
	fds     []int
	body    []byte
}

func newBatcher(x *exportTx) *batcher {
	b := &batcher{x: x, items: make([]item, 0, wire.MaxFDs), kick: make(chan struct{}, 1), sent: make(chan struct{})}
	go b.send()
	return b
}

// add queues items, sealing every batch they fill, and reports whether
// it sealed one.
func (b *batcher) add(its ...item) (sealed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, it := range its {
		sz := 8 + len(it.entry.Key) + len(it.entry.State)
		if len(b.items) == wire.MaxFDs || (len(b.items) == wire.MaxFDs-1 && b.size+sz > wire.MaxBody) {
			b.sealLocked()
			sealed = true
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
	}
	return sealed
}

func (b *batcher) sealLocked() {
	if len(b.items) == 0 {
		return
	}
	b.full = append(b.full, b.items)
	b.sum.Batches++
	if n := len(b.spare); n > 0 {
		b.items, b.spare = b.spare[n-1], b.spare[:n-1]
	} else {
		b.items = make([]item, 0, wire.MaxFDs)
	}
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// close seals the last batch and returns the totals; the sender stops
// once everything is sent (b.sent).
func (b *batcher) close() wire.Summary {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sealLocked()
	b.closed = true
	select {
	case b.kick <- struct{}{}:
	default:
	}
	return b.sum
}

// send is the sender goroutine. After a failure, or once the transaction
// is decided, it sends nothing more.
func (b *batcher) send() {
	defer close(b.sent)
	for {
		closed, err := b.drain()
		if err != nil || closed {
			return
		}
		<-b.kick
	}
}

// drain sends every sealed batch, in order, until none is left; it
// reports whether the batcher is closed and everything sent. After a
// failure (kept in b.err) it sends nothing more.
func (b *batcher) drain() (closed bool, err error) {
	b.drainMu.Lock()
	defer b.drainMu.Unlock()
	if b.err != nil {
		return false, b.err
	}
	for {
		b.mu.Lock()
		batches, closed := b.full, b.closed
		b.full = nil
		b.mu.Unlock()
		if len(batches) == 0 {
			return closed, nil
		}
		for _, its := range batches {
			if err := b.sendOne(b.seq, its); err != nil {
				b.err = err
				return false, err
			}
			b.seq++
			clear(its) // the states, for the collector
			b.mu.Lock()
			b.spare = append(b.spare, its[:0])
			b.mu.Unlock()
		}
	}
}

func (b *batcher) sendOne(seq uint32, its []item) error {
	entries, fds := b.entries[:0], b.fds[:0]
	for _, it := range its {
		entries, fds = append(entries, it.entry), append(fds, it.fd)
	}
	body, flags, states := wire.AppendBatch(b.body[:0], entries)
	clear(entries)
	b.entries, b.fds, b.body = entries[:0], fds[:0], body[:0]
	if flags&wire.BatchMemfd != 0 {
		memfd, err := wire.NewStateMemfd(states)
		if err != nil {
			return fmt.Errorf("batch %d: %w", seq, err)
		}
		defer wire.CloseAll([]int{memfd})
		fds = append(fds, memfd)
	}
	b.sendMu.Lock()
	defer b.sendMu.Unlock()
	if b.x.isDecided() {
		return errDecided
	}
	if err := b.x.p.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeBatch, Flags: flags, TxID: b.x.txid, Seq: seq}, Body: body, FDs: fds}); err != nil {
		return fmt.Errorf("send batch %d: %w", seq, err)
	}
	return nil
}

// errDecided stops the sender of a transaction that was decided (aborted)
// while it was exporting.
var errDecided = errors.New("the migration was decided while exporting")

// run is the source's transaction: freeze, export in batches, then wait
// for the decision and commit or abort.
func (x *exportTx) run() {
	p := x.p
	step("prepare")
	defer holdGC(gcHoldMax)()
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
		conns = p.tracked.appendTo(make([]*Tracked, 0, p.tracked.n))
		x.mu.Lock()
		x.collect = true
		x.frozen = make([]*Tracked, 0, len(conns))
		x.mu.Unlock()
	}
	p.mu.Unlock()

	b := newBatcher(x)
	x.b = b
	defer b.close() // stops the sender on every way out
	fail := func(code uint32, format string, args ...any) {
		x.abort(wire.Failure{Code: code, Reason: fmt.Sprintf(format, args...)}, true)
	}
	for _, l := range x.listeners {
		fd, err := rawFD(l.raw)
		if err != nil {
			fail(wire.CodeExport, "export listener %s: %v", l.key, err)
			return
		}
		b.add(item{entry: wire.Entry{Kind: wire.KindListener, Key: l.key}, fd: fd})
	}
	for _, c := range x.packets {
		fd, err := rawFD(c.raw)
		if err != nil {
			fail(wire.CodeExport, "export packet socket %s: %v", c.key, err)
			return
		}
		b.add(item{entry: wire.Entry{Kind: wire.KindPacket, Key: c.key}, fd: fd})
	}

	// Each worker reports once, when the shared list is exhausted; late
	// connections get a worker of their own. The first failure aborts the
	// transaction, which stops the other workers.
	var next atomic.Int64
	finished := make(chan error)
	quit := make(chan struct{}) // run returned: nobody reads finished
	defer close(quit)
	report := func(err error) {
		select {
		case finished <- err:
		case <-quit:
		}
	}
	pending, workers := 0, 0
	startWorker := func() {
		pending++
		workers++
		go func() {
			var fz freezer
			for {
				i := int(next.Add(freezeChunk)) - freezeChunk
				if i >= len(conns) {
					report(nil)
					return
				}
				if err := x.freezeAll(b, &fz, conns[i:min(i+freezeChunk, len(conns))]); err != nil {
					report(err)
					return
				}
			}
		}()
	}
	var stallC <-chan time.Time
	if len(conns) > 0 {
		startWorker()
		stall := time.NewTicker(freezeStall)
		defer stall.Stop()
		stallC = stall.C
	}
	lastNext := int64(-1)
	freezeLate := func(t *Tracked) {
		pending++
		go func() {
			var fz freezer
			report(x.freezeAll(b, &fz, []*Tracked{t}))
		}()
	}
	var failed error
	senderStopped := b.sent
	for pending > 0 {
		select {
		case err := <-finished:
			pending--
			if err != nil && failed == nil {
				failed = err
				fail(wire.CodeExport, "%v", err)
			}
		case <-senderStopped:
			// Only a failure stops the sender this early.
			senderStopped = nil
			if failed == nil {
				failed = b.err
				fail(wire.CodeExport, "%v", b.err)
			}
		case t := <-x.lateCh:
			freezeLate(t)
		case <-stallC:
			// No chunk was claimed since the last look: every worker is
			// waiting in a hook. Add one, up to freezeWorkers.
			n := next.Load()
			if int(n) >= len(conns) {
				stallC = nil
			} else if n == lastNext && workers < freezeWorkers {
				startWorker()
			}
			lastNext = n
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
	if failed != nil {
		return
	}
	x.mu.Lock()
	x.collect = false
	x.mu.Unlock()
	for drained := false; !drained; {
		select {
		case t := <-x.lateCh:
			var fz freezer
			if err := x.freezeAll(b, &fz, []*Tracked{t}); err != nil {
				fail(wire.CodeExport, "%v", err)
				return
			}
		default:
			drained = true
		}
	}
	if x.isDecided() {
		return
	}
	sum := b.close()
	select {
	case <-b.sent:
		if b.err != nil {
			fail(wire.CodeExport, "%v", b.err)
			return
		}
	case f := <-x.agentEv:
		x.abort(f, true) // confirm, as above
		return
	case <-timer.C:
		fail(wire.CodeDeadline, "deadline of %dms passed while exporting", x.prep.TimeoutMS)
		return
	}
	sum.FreezeStartNS = freezeStart
	sum.ExportDoneNS = wire.Monotonic()
	if err := p.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeExported, TxID: x.txid}, Body: sum.Marshal()}); err != nil {
		fail(wire.CodeAgentClosed, "send exported: %v", err)
		return
	}

	step("exported")
	pairMsg := make(chan error, 1)
	var targetAbort *wire.Failure // set before pairMsg is sent
	go func() {
		m, err := x.pair.Recv()
		if err == nil {
			m.CloseFDs()
			switch m.Type {
			case wire.TypeReady:
			case wire.TypeAbort:
				// The target called it off and says why on the pair too,
				// so the agent hears the real reason whichever of us
				// tells it first.
				var f wire.Failure
				if uerr := f.Unmarshal(m.Body); uerr != nil {
					f = wire.Failure{Code: wire.CodeMalformed, Reason: uerr.Error()}
				}
				f.Reason = "target: " + f.Reason
				targetAbort = &f
				err = fmt.Errorf("target aborted: %v", f)
			default:
				err = fmt.Errorf("%w: %v on the pair, expected ready", wire.ErrMalformed, m.Type)
			}
		}
		pairMsg <- err
	}()
	select {
	case err := <-pairMsg:
		if targetAbort != nil {
			x.abort(*targetAbort, true)
			return
		}
		if err != nil {
			fail(wire.CodeTargetLost, "target went away before it was ready: %v", err)
			return
		}
		step("ready")
		x.commit(sum)
	case f := <-x.agentEv:
		p.mu.Lock()
		leaving := p.closing
		p.mu.Unlock()
		if leaving {
			// The application closed its session: it is shutting down
			// and its copies go with it. The target, or the agent's
			// store, holds everything: let go, as an exit would.
			x.letGo(sum)
			return
		}
		x.abort(f, true) // confirm, as above
	case <-timer.C:
		fail(wire.CodeDeadline, "deadline of %dms passed waiting for the target to be ready", x.prep.TimeoutMS)
	}
}

// letGo hands everything over without a word on the pair, as a process
// that exits after Exported does: the pair's close tells the target, or
// the agent's store, that its copies are now the only ones.
func (x *exportTx) letGo(sum wire.Summary) {
	frozen, ok := x.decide()
	if !ok {
		return
	}
	x.pair.Close()
	x.p.logf("closed during a handoff after exporting everything: letting the new process take over")
	x.moved(frozen, sum)
}

func (x *exportTx) isDecided() bool { return x.stopped.Load() }

// freezeChunk is how many connections a freeze worker takes at a time.
// It freezes them all before it touches what the workers share (the
// frozen list, the batcher), once per chunk rather than once per
// connection: with a lock and a counter per connection, two cores spent
// much of the freeze passing those cache lines back and forth.
const freezeChunk = 16

// freezer is a worker's own buffers, reused for every chunk.
type freezer struct {
	frozen []*Tracked
	states [][]byte
	items  []item
}

// freezeAll calls the Freeze hook of each of ts and queues the frozen
// connections in b. If the transaction is decided meanwhile, it undoes
// the freezes itself, since the decision did not see them.
func (x *exportTx) freezeAll(b *batcher, fz *freezer, ts []*Tracked) error {
	fz.frozen, fz.states, fz.items = fz.frozen[:0], fz.states[:0], fz.items[:0]
	var hookErr error
	for _, t := range ts {
		if x.isDecided() {
			break
		}
		state, err := t.hooks.Freeze()
		if errors.Is(err, ErrSkip) {
			continue
		}
		if err != nil {
			hookErr = fmt.Errorf("freeze connection %v: %w", t.conn.RemoteAddr(), err)
			break
		}
		fz.frozen = append(fz.frozen, t)
		fz.states = append(fz.states, state)
	}
	if len(fz.frozen) == 0 {
		return hookErr
	}
	x.mu.Lock()
	if x.decided {
		x.mu.Unlock()
		for _, t := range fz.frozen {
			t.hooks.Resume()
		}
		return nil
	}
	x.frozen = append(x.frozen, fz.frozen...)
	x.mu.Unlock()
	if hookErr != nil {
		return hookErr // the abort resumes the ones frozen so far
	}
	for i, t := range fz.frozen {
		fd, err := t.fd()
		if err != nil {
			return fmt.Errorf("export connection %v: %w", t.conn.RemoteAddr(), err)
		}
		// The family lets the target adopt the socket without asking the kernel.
		fz.items = append(fz.items, item{entry: wire.Entry{Kind: wire.KindConn, Key: t.family, State: fz.states[i]}, fd: fd})
	}
	clear(fz.states)
	if b.add(fz.items...) {
		// Send the batch just sealed from here, before freezing more,
		// rather than leave it to the sender goroutine. The freezing and
		// the sending then share one core, and the other is left to the
		// agent and the target: with both of the source's goroutines
		// running, their threads waited milliseconds for a CPU.
		if _, err := b.drain(); err != nil {
			select {
			case b.kick <- struct{}{}: // the sender stops on the same error
			default:
			}
		}
	}
	clear(fz.items)
	return nil
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
	x.stopped.Store(true)
	return x.frozen, true
}

// commit tells the target to serve, then lets go of every copy.
func (x *exportTx) commit(sum wire.Summary) {
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
	step("commit-sent")
	x.pair.Close()
	x.moved(frozen, sum)
}

// moved lets go of every copy once the sockets belong to the new process.
func (x *exportTx) moved(frozen []*Tracked, sum wire.Summary) {
	p := x.p
	p.mu.Lock()
	p.moved = true
	p.export = nil
	for _, t := range frozen {
		p.tracked.remove(t)
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
	if x.b != nil {
		// The sender may be sending a batch: let it finish, so that the
		// agent hears Abort after it; it sends nothing after the decision.
		x.b.sendMu.Lock()
		x.b.sendMu.Unlock()
	}
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
