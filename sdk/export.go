package handoff

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/wire"
)

// onPrepare starts an outgoing migration asked for on the agent session c.
func (p *Process) onPrepare(c *wire.Conn, m wire.Msg) {
	var prep wire.Prepare
	if err := prep.Unmarshal(m.Body); err != nil || len(m.FDs) != 1 {
		m.CloseFDs()
		refuse(c, m.TxID, wire.CodeMalformed, fmt.Sprintf("prepare with %d descriptors: %v", len(m.FDs), err))
		return
	}
	pair, err := wire.FromFD(m.FDs[0], "handoff-pair")
	if err != nil {
		refuse(c, m.TxID, wire.CodeMalformed, err.Error())
		return
	}
	p.mu.Lock()
	if p.moved || p.export != nil {
		p.mu.Unlock()
		pair.Close()
		refuse(c, m.TxID, wire.CodeBusy, "this process is already migrating or has moved")
		return
	}
	p.exports++
	x := &exportTx{
		p:       p,
		agent:   c,
		txid:    m.TxID,
		gen:     p.exports,
		prep:    prep,
		precopy: m.Flags&wire.PrepareCopy != 0 && c.Version() >= 3,
		pair:    pair,
		agentEv: make(chan wire.Failure, 2),
		lateCh:  make(chan *Tracked, 1024),
	}
	p.export = x
	p.mu.Unlock()
	go x.run()
}

// exportTx is one outgoing migration: the source's side of the
// transaction (docs/protocol.md §10). run takes it through the protocol's
// steps in order; each step returns false once the transaction is
// decided, by the step itself or by an event it noticed:
//
//	step           what happens                                      events that abort it
//	precopy        (version 3) send a copy of every descriptor that   agent Abort, deadline, a failed send
//	               would move, while the process still serves
//	freeze         stop listeners, packet sockets and connections;    agent Abort, deadline, a Freeze
//	               queue what moves: states of copies (Seal),         hook's error, a failed send
//	               connections tracked since (Batch), drops (Seal)
//	seal           send what is queued, then Exported                 agent Abort, deadline, a failed send
//	awaitDecision  Ready on the pair → commit: Commit, let go         agent Abort (or let go if the
//	                                                                  application is closing), deadline,
//	                                                                  target Abort or loss on the pair
//
// Deciding is done once (decide): commit lets go of every copy, abort
// resumes everything and confirms to the agent.
type exportTx struct {
	p       *Process
	agent   *wire.Conn // the session the Prepare came on
	txid    uint64
	gen     uint64 // marks the sockets this export copied (copyGen)
	prep    wire.Prepare
	precopy bool // PrepareCopy: send descriptors before freezing
	pair    *wire.Conn
	agentEv chan wire.Failure
	lateCh  chan *Tracked
	timer   *time.Timer // the transaction's deadline

	// tally counts what is sent: the pre-copy's copy batches, then the
	// outbox's batches and seals (under its drainMu), then read once
	// everything is sent.
	tally   wire.Tally
	copySeq uint32 // batches the pre-copy sent
	copies  int    // copies the pre-copy sent
	kept    []bool // by copy index: a Keep verdict is queued

	freezeStart uint64 // CLOCK_MONOTONIC when the freeze began
	b           *outbox

	// sendMu is held around each send to the agent, so that undo can wait
	// for a send in progress before it tells the agent Abort; nothing is
	// sent once the transaction is decided.
	sendMu sync.Mutex

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

// fail decides the transaction as aborted for a reason of this process.
func (x *exportTx) fail(code wire.Code, format string, args ...any) {
	x.abort(wire.Failure{Code: code, Reason: fmt.Sprintf(format, args...)}, true)
}

// interrupted handles, without waiting, an Abort from the agent or the
// deadline, and reports whether the transaction is decided.
func (x *exportTx) interrupted(doing string) bool {
	select {
	case f := <-x.agentEv:
		// The agent waits for the source's final word after it asked
		// for an abort: confirm it (skipped if the agent is gone).
		x.abort(f, true)
	case <-x.timer.C:
		x.fail(wire.CodeDeadline, "deadline of %dms passed while %s", x.prep.TimeoutMS, doing)
	default:
	}
	return x.isDecided()
}

// run is the source's transaction, step by step.
func (x *exportTx) run() {
	step("prepare")
	defer holdGC(gcHoldMax)()
	x.timer = time.NewTimer(time.Duration(x.prep.TimeoutMS) * time.Millisecond)
	defer x.timer.Stop()

	if x.precopy && !x.precopyAll() {
		return
	}
	if !x.freeze() {
		return
	}
	sum, ok := x.seal()
	if !ok {
		return
	}
	x.awaitDecision(sum)
}

// copyable is a socket a pre-copy can send: listeners, packet sockets
// and tracked connections.
type copyable interface {
	dup() (int, error) // a duplicate of its descriptor, taken while it is open
	mark() *copyMark   // which pre-copy sent it, under p.mu
}

func (l *listener) dup() (int, error)   { return dupRaw(l.raw) }
func (c *packetConn) dup() (int, error) { return dupRaw(c.raw) }
func (m *copyMark) mark() *copyMark     { return m }

// copyBatch is the copy batch the pre-copy is filling: entries and
// duplicates of their descriptors, sent when MaxFDs are queued.
type copyBatch struct {
	x       *exportTx
	entries []wire.Entry
	fds     []int
	size    int // the body size of entries
	body    []byte
}

// add queues a copy of s. A socket that cannot be duplicated (closed
// since the snapshot, EMFILE) is not copied: if it still moves, the
// freeze sends it in an ordinary batch. A copy of a connection that is
// untracked by the freeze is dropped in the seal.
func (cb *copyBatch) add(kind uint8, key string, s copyable) error {
	fd, err := s.dup()
	if err != nil {
		return nil
	}
	if sz := 8 + len(key); len(cb.fds) > 0 && cb.size+sz > wire.MaxBody {
		// Long keys (listeners' addresses) fill the body first.
		if err := cb.send(); err != nil {
			wire.CloseAll([]int{fd})
			return err
		}
	}
	p := cb.x.p
	p.mu.Lock()
	m := s.mark()
	m.copyGen, m.copyIdx = cb.x.gen, uint32(cb.x.copies)
	cb.x.copies++
	p.mu.Unlock()
	if len(cb.entries) == 0 {
		cb.size = 8
	}
	cb.entries = append(cb.entries, wire.Entry{Kind: kind, Key: key})
	cb.fds = append(cb.fds, fd)
	cb.size += 8 + len(key)
	if len(cb.fds) == wire.MaxFDs {
		return cb.send()
	}
	return nil
}

// drop closes the duplicates queued and not sent.
func (cb *copyBatch) drop() {
	wire.CloseAll(cb.fds)
	cb.entries, cb.fds = cb.entries[:0], cb.fds[:0]
}

// send sends what is queued, and closes the duplicates.
func (cb *copyBatch) send() error {
	if len(cb.fds) == 0 {
		return nil
	}
	x := cb.x
	defer cb.drop()
	var flags uint16
	cb.body, flags = wire.AppendCopyBatch(cb.body[:0], cb.entries)
	if err := x.send(wire.Msg{Header: wire.Header{Type: wire.TypeBatch, Flags: flags, TxID: x.txid, Seq: x.copySeq}, Body: cb.body, FDs: cb.fds}); err != nil {
		return err
	}
	x.copySeq++
	step("copy-sent")
	if err := x.tally.Batch(&wire.BatchInfo{Entries: cb.entries, Copy: true}); err != nil {
		return err
	}
	// Between batches the source looks whether the agent gave up (a
	// target gone, the deadline): a pre-copy cut short sends no more.
	if x.interrupted("pre-copying") {
		return errDecided
	}
	return nil
}

// precopyAll sends a copy of every listener, packet socket and tracked
// connection that would move, in copy batches of up to MaxFDs, while the
// process serves on. The target holds the copies without touching them;
// the seal says which of them move.
func (x *exportTx) precopyAll() bool {
	p := x.p
	var (
		lns   []*listener
		pcs   []*packetConn
		conns []*Tracked
	)
	p.mu.Lock()
	if x.prep.What&wire.MoveListeners != 0 {
		for l := range p.listeners {
			lns = append(lns, l)
		}
	}
	if x.prep.What&wire.MovePackets != 0 {
		for c := range p.packets {
			pcs = append(pcs, c)
		}
	}
	if x.prep.What&wire.MoveConns != 0 {
		conns = p.tracked.appendTo(make([]*Tracked, 0, p.tracked.n))
	}
	p.mu.Unlock()

	cb := &copyBatch{x: x, entries: make([]wire.Entry, 0, wire.MaxFDs), fds: make([]int, 0, wire.MaxFDs)}
	defer cb.drop() // duplicates not sent when the pre-copy stops early
	err := func() error {
		for _, l := range lns {
			if err := cb.add(wire.KindListener, l.key, l); err != nil {
				return err
			}
		}
		for _, c := range pcs {
			if err := cb.add(wire.KindPacket, c.key, c); err != nil {
				return err
			}
		}
		for _, t := range conns {
			if err := cb.add(wire.KindConn, t.family, t); err != nil {
				return err
			}
		}
		return cb.send()
	}()
	if err != nil {
		if !errors.Is(err, errDecided) {
			x.fail(wire.CodeExport, "pre-copy: %v", err)
		}
		return false
	}
	if x.interrupted("pre-copying") {
		return false
	}
	x.kept = make([]bool, x.copies)
	step("precopied")
	return true
}

// send sends m to the agent unless the transaction is decided.
func (x *exportTx) send(m wire.Msg) error {
	x.sendMu.Lock()
	defer x.sendMu.Unlock()
	if x.isDecided() {
		return errDecided
	}
	if err := x.agent.Send(m); err != nil {
		return fmt.Errorf("send %v %d: %w", m.Type, m.Seq, err)
	}
	return nil
}

// Freeze hooks run on worker goroutines that take the connections a
// chunk at a time from a shared list and put what they froze into the
// shared outbox; a sender goroutine sends each message as soon as it is
// full, so the agent relays message k while the workers freeze the
// connections of later ones, and a worker never waits for a send.
//
// One worker does it all as long as its hooks return at once, which
// leaves the other cores to the sender, the agent and the target: with a
// worker per core, the agent and the target waited milliseconds for a CPU
// while the freeze raced ahead of them, and the pause grew. After a
// pre-copy, when the agent and the target have little left to do, a
// worker per core was no faster either: the hooks that wake a
// connection's goroutine then wake it on another core. A hook that
// has to wait (for its connection's goroutine, caught in the middle of a
// write, say) holds up only its own worker: when no chunk has been taken
// for freezeStall, another worker starts, up to freezeWorkers.
const (
	freezeStall   = 200 * time.Microsecond
	freezeWorkers = 32
)

// freezeChunk is how many connections a freeze worker takes at a time.
// It freezes them all before it touches what the workers share (the
// frozen list, the outbox), once per chunk rather than once per
// connection: with a lock and a counter per connection, two cores spent
// much of the freeze passing those cache lines back and forth.
const freezeChunk = 16

// job is one connection to freeze: copy is its copy index when the
// pre-copy sent it, -1 when it goes in an ordinary batch.
type job struct {
	t    *Tracked
	copy int32
}

// copyOf is the copy index this export gave a socket, or -1.
func (x *exportTx) copyOf(gen uint64, idx uint32) int32 {
	if x.precopy && gen == x.gen {
		return int32(idx)
	}
	return -1
}

// freeze stops the listeners, packet sockets and connections that move
// and queues them in the outbox: copies as Keep verdicts with their
// states, the rest as ordinary batch entries, and every copy that does
// not move (closed, untracked or skipped since) as a Drop.
func (x *exportTx) freeze() bool {
	p := x.p
	x.freezeStart = wire.Monotonic()
	step("freeze")
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

	var jobs []job
	p.mu.Lock()
	if x.prep.What&wire.MoveConns != 0 {
		p.waitAccepted()
		jobs = make([]job, 0, p.tracked.n)
		for _, t := range p.tracked.ts {
			if t != nil {
				jobs = append(jobs, job{t, x.copyOf(t.copyGen, t.copyIdx)})
			}
		}
		x.mu.Lock()
		x.collect = true
		x.frozen = make([]*Tracked, 0, len(jobs))
		x.mu.Unlock()
	}
	p.mu.Unlock()

	b := newOutbox(x)
	x.b = b
	for _, l := range x.listeners {
		if !x.queueSocket(wire.KindListener, l.key, x.copyOf(l.copyGen, l.copyIdx), l.raw) {
			return false
		}
	}
	for _, c := range x.packets {
		if !x.queueSocket(wire.KindPacket, c.key, x.copyOf(c.copyGen, c.copyIdx), c.raw) {
			return false
		}
	}
	if !x.freezeConns(jobs) {
		return false
	}
	for i, k := range x.kept {
		if !k {
			b.add(item{fd: -1, copy: int32(i), drop: true})
		}
	}
	return true
}

// queueSocket queues a frozen listener or packet socket: a Keep verdict
// for a copy, or an entry with its descriptor.
func (x *exportTx) queueSocket(kind uint8, key string, copy int32, raw syscall.RawConn) bool {
	if copy >= 0 {
		x.kept[copy] = true
		x.b.add(item{fd: -1, copy: copy})
		return true
	}
	fd, err := rawFD(raw)
	if err != nil {
		x.fail(wire.CodeExport, "export %s: %v", key, err)
		return false
	}
	x.b.add(item{entry: wire.Entry{Kind: kind, Key: key}, fd: fd, copy: -1})
	return true
}

// freezeConns runs the freeze workers over jobs, and over connections
// tracked meanwhile, until all are frozen or the transaction is decided.
func (x *exportTx) freezeConns(jobs []job) bool {
	b := x.b
	// Each worker reports once, when the shared list is exhausted; late
	// connections get a worker of their own. The first failure aborts the
	// transaction, which stops the other workers.
	var next atomic.Int64
	finished := make(chan error)
	quit := make(chan struct{}) // freezeConns returned: nobody reads finished
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
				if i >= len(jobs) {
					report(nil)
					return
				}
				if err := x.freezeAll(&fz, jobs[i:min(i+freezeChunk, len(jobs))]); err != nil {
					report(err)
					return
				}
			}
		}()
	}
	var stallC <-chan time.Time
	if len(jobs) > 0 {
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
			report(x.freezeAll(&fz, []job{{t, -1}}))
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
				x.fail(wire.CodeExport, "%v", err)
			}
		case <-senderStopped:
			// Only a failure stops the sender this early.
			senderStopped = nil
			if failed == nil {
				failed = b.err
				x.fail(wire.CodeExport, "%v", b.err)
			}
		case t := <-x.lateCh:
			freezeLate(t)
		case <-stallC:
			// No chunk was claimed since the last look: every worker is
			// waiting in a hook. Add one, up to freezeWorkers.
			n := next.Load()
			if int(n) >= len(jobs) {
				stallC = nil
			} else if n == lastNext && workers < freezeWorkers {
				startWorker()
			}
			lastNext = n
		case f := <-x.agentEv:
			x.abort(f, true) // confirm, as in interrupted
			return false
		case <-x.timer.C:
			x.fail(wire.CodeDeadline, "deadline of %dms passed while freezing connections", x.prep.TimeoutMS)
			return false
		}
	}
	if failed != nil {
		return false
	}
	x.mu.Lock()
	x.collect = false
	x.mu.Unlock()
	for drained := false; !drained; {
		select {
		case t := <-x.lateCh:
			var fz freezer
			if err := x.freezeAll(&fz, []job{{t, -1}}); err != nil {
				x.fail(wire.CodeExport, "%v", err)
				return false
			}
		default:
			drained = true
		}
	}
	return !x.isDecided()
}

// freezer is a worker's own buffers, reused for every chunk.
type freezer struct {
	frozen []job
	states [][]byte
	items  []item
	ts     []*Tracked
}

// freezeAll calls the Freeze hook of each of js and queues the frozen
// connections in the outbox. If the transaction is decided meanwhile, it
// undoes the freezes itself, since the decision did not see them.
func (x *exportTx) freezeAll(fz *freezer, js []job) error {
	fz.frozen, fz.states, fz.items, fz.ts = fz.frozen[:0], fz.states[:0], fz.items[:0], fz.ts[:0]
	var hookErr error
	for _, j := range js {
		if x.isDecided() {
			break
		}
		state, err := j.t.hooks.Freeze()
		if errors.Is(err, ErrSkip) {
			continue // a copy without a Keep verdict is dropped
		}
		if err != nil {
			hookErr = fmt.Errorf("freeze connection %v: %w", j.t.conn.RemoteAddr(), err)
			break
		}
		fz.frozen = append(fz.frozen, j)
		fz.ts = append(fz.ts, j.t)
		fz.states = append(fz.states, state)
	}
	if len(fz.frozen) == 0 {
		return hookErr
	}
	x.mu.Lock()
	if x.decided {
		x.mu.Unlock()
		for _, j := range fz.frozen {
			j.t.hooks.Resume()
		}
		return nil
	}
	x.frozen = append(x.frozen, fz.ts...)
	for _, t := range fz.ts {
		t.frozenGen.Store(x.gen)
	}
	x.mu.Unlock()
	clear(fz.ts)
	if hookErr != nil {
		return hookErr // the abort resumes the ones frozen so far
	}
	for i, j := range fz.frozen {
		if j.copy >= 0 {
			x.kept[j.copy] = true
			fz.items = append(fz.items, item{entry: wire.Entry{Kind: wire.KindConn, State: fz.states[i]}, fd: -1, copy: j.copy})
			continue
		}
		fd, err := j.t.fd()
		if err != nil {
			return fmt.Errorf("export connection %v: %w", j.t.conn.RemoteAddr(), err)
		}
		// The family lets the target adopt the socket without asking the kernel.
		fz.items = append(fz.items, item{entry: wire.Entry{Kind: wire.KindConn, Key: j.t.family, State: fz.states[i]}, fd: fd, copy: -1})
	}
	clear(fz.states)
	clear(fz.frozen)
	if x.b.add(fz.items...) {
		// Send the message just sealed from here, before freezing more,
		// rather than leave it to the sender goroutine. The freezing and
		// the sending then share one core, and the other is left to the
		// agent and the target: with both of the source's goroutines
		// running, their threads waited milliseconds for a CPU.
		if _, err := x.b.drain(); err != nil {
			x.b.wake() // the sender stops on the same error
		}
	}
	clear(fz.items)
	return nil
}

// seal sends what the freeze queued and then Exported with the totals.
func (x *exportTx) seal() (wire.Summary, bool) {
	b := x.b
	b.close()
	select {
	case <-b.sent:
		if b.err != nil {
			if !errors.Is(b.err, errDecided) {
				x.fail(wire.CodeExport, "%v", b.err)
			}
			return wire.Summary{}, false
		}
	case f := <-x.agentEv:
		x.abort(f, true) // confirm, as in interrupted
		return wire.Summary{}, false
	case <-x.timer.C:
		x.fail(wire.CodeDeadline, "deadline of %dms passed while exporting", x.prep.TimeoutMS)
		return wire.Summary{}, false
	}
	sum := x.tally.Summary()
	sum.FreezeStartNS = x.freezeStart
	sum.ExportDoneNS = wire.Monotonic()
	if err := x.send(wire.Msg{Header: wire.Header{Type: wire.TypeExported, TxID: x.txid}, Body: sum.Marshal()}); err != nil {
		if !errors.Is(err, errDecided) {
			x.fail(wire.CodeAgentClosed, "send exported: %v", err)
		}
		return wire.Summary{}, false
	}
	step("exported")
	return sum, true
}

// awaitDecision waits for the target's Ready on the pair and commits, or
// aborts on whatever comes first instead.
func (x *exportTx) awaitDecision(sum wire.Summary) {
	p := x.p
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
			x.fail(wire.CodeTargetLost, "target went away before it was ready: %v", err)
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
		x.abort(f, true) // confirm, as in interrupted
	case <-x.timer.C:
		x.fail(wire.CodeDeadline, "deadline of %dms passed waiting for the target to be ready", x.prep.TimeoutMS)
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
		t.moved = true
	}
	p.mu.Unlock()
	// The decision is made: say so before the slower work of closing.
	_ = x.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeCommitted, TxID: x.txid}, Body: wire.Stamp{MonoNS: wire.Monotonic()}.Marshal()})
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
	// A send may be in progress: let it finish, so that the agent hears
	// Abort after it; nothing is sent after the decision.
	x.sendMu.Lock()
	x.sendMu.Unlock()
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
		_ = x.agent.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: x.txid}, Body: f.Marshal()})
	}
	p.logf("migration %d aborted, serving on: %v", x.txid, f)
}

// readDeadliner freezes only the reading side of a packet socket.
type readDeadliner struct{ pc net.PacketConn }

func (r readDeadliner) SetDeadline(t time.Time) error { return r.pc.SetReadDeadline(t) }
