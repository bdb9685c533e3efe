package nodeagent

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/handoff-dev/handoff/internal/gchold"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/wire"
)

// Phases of a result.
const (
	PhaseCompleted = "Completed"
	PhaseFailed    = "Failed"
)

// relayGCHoldMax bounds how long a relay holds the garbage collector off.
const relayGCHoldMax = time.Second

// finalWordGrace is how long the agent waits, after it asked for an abort,
// for the source to say what it decided.
const finalWordGrace = 5 * time.Second

// ErrBusy means a session named in a request is already in a transaction.
var ErrBusy = errors.New("session is busy with another migration")

// ErrNoSession means a request named a session the agent does not have.
var ErrNoSession = errors.New("no such session")

type event struct {
	from *session
	msg  wire.Msg
	err  error
}

// txn is one transaction seen from the agent.
type txn struct {
	id     uint64
	a      *Agent
	log    logr.Logger
	events chan event
	done   chan struct{}
	// delivering is held (read) by each deliver; finish takes it after
	// closing done, so that no deliver can still put a message into
	// events once finish drains it.
	delivering sync.RWMutex
}

func (a *Agent) newTxn() *txn {
	a.nextTx++
	id := a.nextTx
	return &txn{id: id, a: a, log: a.log.WithValues("txid", id), events: make(chan event, 64), done: make(chan struct{})}
}

// deliver hands a session's message to the transaction, or discards it
// (closing its descriptors) if the transaction has ended.
func (t *txn) deliver(ev event) {
	t.delivering.RLock()
	defer t.delivering.RUnlock()
	select {
	case <-t.done:
		ev.msg.CloseFDs()
		return
	default:
	}
	// done may close meanwhile, and select picks among ready cases at
	// random: a message sent now is drained by finish, which waits for
	// this deliver to return before it drains.
	select {
	case t.events <- ev:
	case <-t.done:
		ev.msg.CloseFDs()
	}
}

func (t *txn) fault(step string) {
	if t.a.cfg.Fault != nil {
		t.a.cfg.Fault(step)
	}
}

// finish ends the transaction: later events are discarded, and the
// descriptors of undelivered ones closed.
func (t *txn) finish(ss ...*session) {
	close(t.done)
	// Every deliver that saw done open has returned after this.
	t.delivering.Lock()
	t.delivering.Unlock()

	for _, s := range ss {
		if s == nil {
			continue
		}
		s.mu.Lock()
		if s.tx == t {
			s.tx = nil
		}
		s.mu.Unlock()
	}
	for {
		select {
		case ev := <-t.events:
			ev.msg.CloseFDs()
		default:
			return
		}
	}
}

// attach reserves sessions for t. Called with a.mu held.
func attach(t *txn, ss ...*session) error {
	for _, s := range ss {
		s.mu.Lock()
		busy := s.tx != nil
		s.mu.Unlock()
		if busy {
			return fmt.Errorf("%v: %w", s, ErrBusy)
		}
	}
	for _, s := range ss {
		s.mu.Lock()
		s.tx = t
		s.mu.Unlock()
	}
	return nil
}

func setState(s *session, state string) {
	s.mu.Lock()
	s.state = state
	s.mu.Unlock()
}

// relayCounter checks the messages of a transfer from a source and
// counts what they carry (wire.Tally), and their sequence numbers.
type relayCounter struct {
	wire.Tally
	precopy  bool           // copy batches and Seals are allowed (PrepareCopy)
	nextSeq  uint32         // the next Batch's seq
	nextSeal uint32         // the next Seal's seq
	bi       wire.BatchInfo // reused: a transfer is thousands of entries
	si       wire.SealInfo
}

// checkBatch checks and counts a Batch.
func (r *relayCounter) checkBatch(m wire.Msg) error {
	if m.Seq != r.nextSeq {
		return fmt.Errorf("batch %d arrived where %d was due", m.Seq, r.nextSeq)
	}
	if m.Flags&^(wire.BatchMemfd|wire.BatchCopy) != 0 {
		return fmt.Errorf("batch %d has unknown flags %#x", m.Seq, m.Flags)
	}
	bi := &r.bi
	if err := wire.DecodeBatchInto(bi, m.Body, len(m.FDs)); err != nil {
		return err
	}
	if bi.Memfd != (m.Flags&wire.BatchMemfd != 0) || bi.Copy != (m.Flags&wire.BatchCopy != 0) {
		return fmt.Errorf("batch %d: header flags %#x disagree with the body", m.Seq, m.Flags)
	}
	if bi.Copy && !r.precopy {
		return fmt.Errorf("batch %d is a copy batch, but this transaction is no pre-copy", m.Seq)
	}
	if err := r.Batch(bi); err != nil {
		return fmt.Errorf("batch %d: %w", m.Seq, err)
	}
	r.nextSeq++
	return nil
}

// checkSeal checks and counts a Seal.
func (r *relayCounter) checkSeal(m wire.Msg) error {
	if !r.precopy {
		return fmt.Errorf("seal in a transaction that is no pre-copy")
	}
	if m.Seq != r.nextSeal {
		return fmt.Errorf("seal %d arrived where %d was due", m.Seq, r.nextSeal)
	}
	si := &r.si
	if err := wire.DecodeSealInto(si, m.Body, len(m.FDs)); err != nil {
		return err
	}
	if si.Memfd != (m.Flags == wire.BatchMemfd) {
		return fmt.Errorf("seal %d: header flags %#x disagree with the body", m.Seq, m.Flags)
	}
	if err := r.Seal(si); err != nil {
		return fmt.Errorf("seal %d: %w", m.Seq, err)
	}
	r.nextSeal++
	return nil
}

// matches checks the source's Exported summary against the counts.
func (r *relayCounter) matches(s wire.Summary) error { return r.Check(s) }

func failure(code wire.Code, format string, args ...any) *wire.Failure {
	return &wire.Failure{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// Migrate moves session from's sockets to session to, which must be in
// standby, and returns the outcome. The error is for requests that cannot
// start (unknown or busy sessions); a migration that starts and fails is
// a Result with Phase Failed and a reason.
func (a *Agent) Migrate(from, to uint64, what uint32, timeout time.Duration, progress func(phase, msg string)) (admin.Result, error) {
	if progress == nil {
		progress = func(string, string) {}
	}
	a.mu.Lock()
	src, dst := a.sessions[from], a.sessions[to]
	switch {
	case src == nil:
		a.mu.Unlock()
		return admin.Result{}, fmt.Errorf("source session %d: %w", from, ErrNoSession)
	case dst == nil:
		a.mu.Unlock()
		return admin.Result{}, fmt.Errorf("target session %d: %w", to, ErrNoSession)
	case from == to:
		a.mu.Unlock()
		return admin.Result{}, fmt.Errorf("session %d cannot migrate to itself; to restart in place use store", from)
	case !dst.standby:
		a.mu.Unlock()
		return admin.Result{}, fmt.Errorf("target %v is not in standby: start the new process with standby so it waits for the handoff instead of opening its own sockets", dst)
	case a.handing:
		a.mu.Unlock()
		return admin.Result{}, fmt.Errorf("migrate session %d: %w", from, ErrHandingOver)
	}
	t := a.newTxn()
	if err := attach(t, src, dst); err != nil {
		a.mu.Unlock()
		return admin.Result{}, err
	}
	a.mu.Unlock()
	defer t.finish(src, dst)
	t.log = t.log.WithValues("source", src.id, "target", dst.id)
	r := &relay{t: t, src: src, dst: dst, progress: progress}
	res := r.run(what, timeout)
	a.record(t.log, res)
	return res, nil
}

// relay is one source → target transaction as the agent runs it
// (docs/protocol.md §10): it relays what the source exports to the
// target, checking and counting it on the way, and reports what the
// source decided. The agent never decides: its Abort is a request that
// the source confirms (Abort back) or overtakes (Committed).
//
// One method per event; each reports whether the transaction is over.
//
//	event            before Exported                        after Exported
//	source Batch     check, count, relay to the target      UnexpectedMessage to the source
//	source Seal      check, count, relay to the target      UnexpectedMessage to the source
//	source Exported  check the counts, End to the target    -
//	source Committed -                                      committed: over when the target serves, or after finalWordGrace
//	source Abort     Abort to the target; over              over (the target hears it on the pair)
//	source gone      SourceLost to the target; over         the target takes over when the pair closes
//	target Abort     Abort to the source (it confirms)      the same
//	target Serving   over: Completed                        the same
//	target gone      TargetLost to the source               the same; over if committed
//	deadline         DeadlineExceeded to both; grace starts over if committed
//	grace ends       over, with the first cause
type relay struct {
	t        *txn
	src, dst *session
	progress func(phase, msg string)

	rc                   relayCounter
	sum                  wire.Summary // the source's Exported
	exported, committed  bool
	srcGone, dstGone     bool
	prepareNS            uint64 // CLOCK_MONOTONIC when Prepare went out
	committedNS, serveNS uint64
	grace                <-chan time.Time
	cause                *wire.Failure // the first reason the agent gave for an abort
	srcFailure           *wire.Failure // the reason the source gave
}

// run is the transaction, top-down: prepare the source, begin the target,
// then relay events until it is over.
func (r *relay) run(what uint32, timeout time.Duration) admin.Result {
	t := r.t
	// No collection while the connections are frozen: in the agent's
	// first migration one ran during the transfer and took two thirds of
	// the agent's CPU there. Taken before Prepare, so that a collection
	// already running finishes outside the pause.
	defer gchold.Hold(relayGCHoldMax)()
	start := time.Now()
	res := admin.Result{TxID: t.id, From: r.src.id, To: r.dst.id}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()

	if f := r.prepare(what, timeout); f != nil {
		return t.result(res, start, f, nil, 0, 0)
	}
	for {
		var over bool
		select {
		case ev := <-t.events:
			switch {
			case ev.from == r.src && ev.err != nil:
				over = r.sourceGone(ev.err)
			case ev.from == r.src:
				over = r.fromSource(ev.msg)
			case ev.err != nil:
				over = r.targetGone(ev.err)
			default:
				over = r.fromTarget(ev.msg)
			}
		case <-deadline.C:
			over = r.deadline(timeout)
		case <-r.grace:
			over = r.graceOver()
		}
		if over {
			return r.outcome(res, start)
		}
	}
}

// prepare creates the pair and sends Prepare to the source and Begin to
// the target, with the pre-copy when both speak version 3. A failure to
// reach the source ends the transaction at once (the result's reason);
// a failure to reach the target asks the source to abort.
func (r *relay) prepare(what uint32, timeout time.Duration) *wire.Failure {
	t, src, dst := r.t, r.src, r.dst
	tms := uint32(timeout / time.Millisecond)
	pa, pb, err := wire.Pair()
	if err != nil {
		return failure(wire.CodeInternal, "%v", err)
	}
	r.rc.precopy = src.conn.Version() >= 3 && dst.conn.Version() >= 3
	var prepFlags, beginFlags uint16
	if r.rc.precopy {
		prepFlags, beginFlags = wire.PrepareCopy, wire.BeginCopy
	}
	setState(src, "migrating-out")
	setState(dst, "migrating-in")
	r.progress("Preparing", fmt.Sprintf("asking %v to export", src))
	t.log.Info("migration starting", "timeout", timeout.String(), "precopy", r.rc.precopy)
	r.prepareNS = wire.Monotonic()
	err = src.sendFlags(wire.TypePrepare, prepFlags, t.id, wire.Prepare{What: what, TimeoutMS: tms, Target: dst.id}.Marshal(), []int{pa})
	wire.CloseAll([]int{pa})
	if err != nil {
		wire.CloseAll([]int{pb})
		setState(src, "active")
		setState(dst, "standby")
		return failure(wire.CodeSourceLost, "send prepare to %v: %v", src, err)
	}
	t.fault("prepared")
	err = dst.sendFlags(wire.TypeBegin, beginFlags, t.id, wire.Begin{TimeoutMS: tms, Source: src.id, SourceName: src.name}.Marshal(), []int{pb})
	wire.CloseAll([]int{pb})
	if err != nil {
		r.abortSource(failure(wire.CodeTargetLost, "send begin to %v: %v", dst, err))
	}
	return nil
}

// abortSource asks the source to abort; the first cause is the one reported.
func (r *relay) abortSource(f *wire.Failure) {
	if r.cause == nil {
		r.cause = f
	}
	_ = r.src.send(wire.TypeAbort, r.t.id, f.Marshal(), nil)
}

// abortTarget tells the target, if it is still there.
func (r *relay) abortTarget(f *wire.Failure) {
	if !r.dstGone {
		_ = r.dst.send(wire.TypeAbort, r.t.id, f.Marshal(), nil)
	}
}

// abortBoth is a bad message from the source: both sides hear why.
func (r *relay) abortBoth(f *wire.Failure) {
	r.abortSource(f)
	r.abortTarget(r.cause)
}

func (r *relay) sourceGone(err error) bool {
	r.srcGone = true
	switch {
	case !r.exported:
		f := failure(wire.CodeSourceLost, "source %v went away before exporting everything: %v", r.src, err)
		if r.cause == nil {
			r.cause = f
		}
		r.abortTarget(f)
		return true
	case r.committed:
		return r.serveNS != 0 || r.dstGone
	}
	// Exported, then exited: its copies are gone, so the target takes
	// over when it sees the pair close.
	r.t.log.Info("source exited after exporting; the target takes over")
	return false
}

func (r *relay) fromSource(m wire.Msg) bool {
	t := r.t
	switch m.Type {
	case wire.TypeBatch, wire.TypeSeal:
		defer m.CloseFDs()
		if r.exported {
			r.abortSource(failure(wire.CodeUnexpected, "%v after exported", m.Type))
			return false
		}
		check := r.rc.checkBatch
		if m.Type == wire.TypeSeal {
			check = r.rc.checkSeal
		}
		if err := check(m); err != nil {
			r.abortBoth(failure(wire.CodeMalformed, "source sent a bad %v: %v", m.Type, err))
			return false
		}
		if r.cause == nil && !r.dstGone {
			err := r.dst.conn.Send(wire.Msg{Header: wire.Header{Type: m.Type, Flags: m.Flags, TxID: t.id, Seq: m.Seq}, Body: m.Body, FDs: m.FDs})
			if err != nil {
				r.abortSource(failure(wire.CodeTargetLost, "relay %v %d to %v: %v", m.Type, m.Seq, r.dst, err))
			}
		}
		if m.Type == wire.TypeBatch {
			t.a.m.fdsMoved.Add(float64(len(m.FDs)))
		}
		t.a.bodies.put(m.Body) // sent: the kernel has its copy
		t.fault("relayed-batch")
		if m.Type == wire.TypeBatch && r.rc.nextSeq%8 == 0 {
			r.progress("Transferring", fmt.Sprintf("%d batches relayed", r.rc.nextSeq))
		}
	case wire.TypeExported:
		err := r.sum.Unmarshal(m.Body)
		if err == nil {
			err = r.rc.matches(r.sum)
		}
		if err != nil {
			r.abortBoth(failure(wire.CodeMalformed, "bad exported: %v", err))
			return false
		}
		r.exported = true
		if r.cause == nil && !r.dstGone {
			if err := r.dst.send(wire.TypeEnd, t.id, m.Body, nil); err != nil {
				r.abortSource(failure(wire.CodeTargetLost, "send end to %v: %v", r.dst, err))
			}
		}
		t.fault("ended")
		r.progress("Transferring", fmt.Sprintf("exported %d listeners, %d connections, %d packet sockets in %d batches; waiting for the target", r.sum.Listeners, r.sum.Conns, r.sum.Packets, r.sum.Batches))
	case wire.TypeCommitted:
		var st wire.Stamp
		_ = st.Unmarshal(m.Body)
		r.committed, r.committedNS = true, st.MonoNS
		r.progress("Committed", "the source let go; waiting for the target to serve")
		if r.serveNS != 0 || r.dstGone {
			return true
		}
		if r.grace == nil {
			r.grace = time.After(finalWordGrace)
		}
	case wire.TypeAbort:
		var f wire.Failure
		if err := f.Unmarshal(m.Body); err != nil {
			f = wire.Failure{Code: wire.CodeMalformed, Reason: err.Error()}
		}
		r.srcFailure = &f
		if !r.exported {
			r.abortTarget(&f)
		}
		// The source decides; after End the target hears it on the pair.
		return true
	default:
		m.CloseFDs()
		r.abortSource(failure(wire.CodeUnexpected, "source sent %v during the migration", m.Type))
	}
	return false
}

func (r *relay) targetGone(err error) bool {
	r.dstGone = true
	if r.committed {
		r.t.log.Error(err, "target went away after the commit")
		return true
	}
	r.abortSource(failure(wire.CodeTargetLost, "target %v went away before it was ready: %v", r.dst, err))
	return r.srcGone || r.srcFailure != nil
}

func (r *relay) fromTarget(m wire.Msg) bool {
	m.CloseFDs()
	switch m.Type {
	case wire.TypeAbort:
		var f wire.Failure
		if err := f.Unmarshal(m.Body); err != nil {
			f = wire.Failure{Code: wire.CodeMalformed, Reason: err.Error()}
		}
		f.Reason = "target: " + f.Reason
		r.abortSource(&f)
		return r.srcGone || r.srcFailure != nil
	case wire.TypeServing:
		var st wire.Stamp
		_ = st.Unmarshal(m.Body)
		r.serveNS = st.MonoNS
		// The target serves only after the source's Commit on the pair,
		// or once the source left having exported everything: the
		// sockets are the target's now, even if the source stopped
		// before it could tell us.
		if !r.committed && !r.srcGone {
			r.t.log.V(1).Info("the target serves before the source confirmed its commit")
		}
		r.committed = true
		return true
	default:
		r.abortSource(failure(wire.CodeUnexpected, "target sent %v during the migration", m.Type))
	}
	return false
}

func (r *relay) deadline(timeout time.Duration) bool {
	if r.committed {
		return true
	}
	r.abortSource(failure(wire.CodeDeadline, "deadline of %v passed before the target was ready", timeout))
	r.abortTarget(r.cause)
	if r.grace == nil {
		r.grace = time.After(finalWordGrace)
	}
	return false
}

func (r *relay) graceOver() bool {
	if !r.committed && r.srcFailure == nil && r.cause != nil {
		r.cause.Reason += "; the source did not confirm the abort in time"
	}
	return true
}

// outcome sets the sessions' states and makes the result.
func (r *relay) outcome(res admin.Result, start time.Time) admin.Result {
	src, dst := r.src, r.dst
	if r.committed {
		setState(src, "moved")
		setState(dst, "active")
		dst.mu.Lock()
		dst.standby = false
		dst.mu.Unlock()
	} else {
		setState(src, "active")
		setState(dst, "standby")
	}
	got := r.rc.Summary()
	res.Listeners, res.Connections, res.Packets = int(got.Listeners), int(got.Conns), int(got.Packets)
	res.Batches, res.StateBytes, res.Copies, res.Dropped = int(got.Batches), got.StateBytes, int(got.Copies), r.rc.Dropped()
	if r.rc.precopy && r.sum.FreezeStartNS > r.prepareNS {
		res.PrecopyNS = int64(r.sum.FreezeStartNS - r.prepareNS)
	}
	if r.committed {
		return r.t.result(res, start, nil, &r.sum, r.committedNS, r.serveNS)
	}
	f := r.cause
	if f == nil {
		f = r.srcFailure
	}
	if f == nil {
		f = failure(wire.CodeInternal, "migration ended without a decision")
	}
	return r.t.result(res, start, f, &r.sum, 0, 0)
}

// result fills in the outcome and logs it.
func (t *txn) result(res admin.Result, start time.Time, f *wire.Failure, sum *wire.Summary, committedNS, serveNS uint64) admin.Result {
	res.DurationNS = int64(time.Since(start))
	if f != nil {
		res.Phase = PhaseFailed
		res.Code, res.Reason = f.Code, f.Code.String()
		res.Message = f.Reason
		return res
	}
	res.Phase = PhaseCompleted
	end := serveNS
	if end == 0 {
		end = committedNS
	}
	if sum != nil && end > sum.FreezeStartNS && sum.FreezeStartNS != 0 {
		res.PauseNS = int64(end - sum.FreezeStartNS)
	}
	return res
}

// record logs a result and counts it.
func (a *Agent) record(log logr.Logger, res admin.Result) {
	a.m.migrations.WithLabelValues(res.Phase, res.Reason).Inc()
	if a.cfg.OnResult != nil {
		defer a.cfg.OnResult(res)
	}
	if res.Phase == PhaseCompleted {
		a.m.pause.Observe(res.Pause().Seconds())
		log.Info("migration completed", "listeners", res.Listeners, "connections", res.Connections, "packets", res.Packets,
			"batches", res.Batches, "stateBytes", res.StateBytes, "pause", res.Pause().String(), "duration", res.Duration().String())
		return
	}
	log.Info("migration failed", "reason", res.Reason, "message", res.Message, "duration", res.Duration().String())
}
