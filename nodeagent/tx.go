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

// relayCounter checks batches from a source and counts what they carry.
type relayCounter struct {
	sum     wire.Summary
	nextSeq uint32
	bi      wire.BatchInfo // reused: a transfer is thousands of entries
}

func (r *relayCounter) check(m wire.Msg) error {
	if m.Seq != r.nextSeq {
		return fmt.Errorf("batch %d arrived where %d was due", m.Seq, r.nextSeq)
	}
	if m.Flags != 0 && m.Flags != wire.BatchMemfd {
		return fmt.Errorf("batch %d has unknown flags %#x", m.Seq, m.Flags)
	}
	bi := &r.bi
	if err := wire.DecodeBatchInto(bi, m.Body, len(m.FDs)); err != nil {
		return err
	}
	if bi.Memfd != (m.Flags&wire.BatchMemfd != 0) {
		return fmt.Errorf("batch %d: header and body disagree about the state memfd", m.Seq)
	}
	for _, e := range bi.Entries {
		switch e.Kind {
		case wire.KindListener:
			r.sum.Listeners++
		case wire.KindConn:
			r.sum.Conns++
		case wire.KindPacket:
			r.sum.Packets++
		}
	}
	r.sum.StateBytes += bi.StateSum
	r.sum.Batches++
	r.nextSeq++
	return nil
}

func (r *relayCounter) matches(s wire.Summary) error {
	c := r.sum
	if c.Listeners != s.Listeners || c.Conns != s.Conns || c.Packets != s.Packets || c.Batches != s.Batches || c.StateBytes != s.StateBytes {
		return fmt.Errorf("exported announces %d listeners, %d connections, %d packet sockets, %d batches, %d state bytes; the batches carried %d, %d, %d, %d, %d",
			s.Listeners, s.Conns, s.Packets, s.Batches, s.StateBytes, c.Listeners, c.Conns, c.Packets, c.Batches, c.StateBytes)
	}
	return nil
}

func failure(code uint32, format string, args ...any) *wire.Failure {
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
	}
	t := a.newTxn()
	if err := attach(t, src, dst); err != nil {
		a.mu.Unlock()
		return admin.Result{}, err
	}
	a.mu.Unlock()
	defer t.finish(src, dst)
	t.log = t.log.WithValues("source", src.id, "target", dst.id)
	res := t.relay(src, dst, what, timeout, progress)
	a.record(t.log, res)
	return res, nil
}

// relay runs a source → target transaction.
func (t *txn) relay(src, dst *session, what uint32, timeout time.Duration, progress func(phase, msg string)) admin.Result {
	// No collection while the connections are frozen: in the agent's
	// first migration one ran during the transfer and took two thirds of
	// the agent's CPU there. Taken before Prepare, so that a collection
	// already running finishes outside the pause.
	defer gchold.Hold(relayGCHoldMax)()
	start := time.Now()
	res := admin.Result{TxID: t.id, From: src.id, To: dst.id}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tms := uint32(timeout / time.Millisecond)

	pa, pb, err := wire.Pair()
	if err != nil {
		return t.result(res, start, failure(wire.CodeInternal, "%v", err), nil, 0, 0)
	}
	setState(src, "migrating-out")
	setState(dst, "migrating-in")
	progress("Preparing", fmt.Sprintf("asking %v to freeze and export", src))
	t.log.Info("migration starting", "timeout", timeout.String())
	err = src.send(wire.TypePrepare, t.id, wire.Prepare{What: what, TimeoutMS: tms, Target: dst.id}.Marshal(), []int{pa})
	wire.CloseAll([]int{pa})
	if err != nil {
		wire.CloseAll([]int{pb})
		setState(src, "active")
		setState(dst, "standby")
		return t.result(res, start, failure(wire.CodeSourceLost, "send prepare to %v: %v", src, err), nil, 0, 0)
	}
	t.fault("prepared")
	err = dst.send(wire.TypeBegin, t.id, wire.Begin{TimeoutMS: tms, Source: src.id, SourceName: src.name}.Marshal(), []int{pb})
	wire.CloseAll([]int{pb})
	var cause *wire.Failure
	abortSrc := func(f *wire.Failure) {
		if cause == nil {
			cause = f
		}
		_ = src.send(wire.TypeAbort, t.id, f.Marshal(), nil)
	}
	if err != nil {
		abortSrc(failure(wire.CodeTargetLost, "send begin to %v: %v", dst, err))
	}

	var (
		rc                   relayCounter
		sum                  wire.Summary
		exported, committed  bool
		srcGone, dstGone     bool
		committedNS, serveNS uint64
		grace                <-chan time.Time
		srcFailure           *wire.Failure
	)
	done := func() admin.Result {
		if committed {
			setState(src, "moved")
			setState(dst, "active")
			dst.mu.Lock()
			dst.standby = false
			dst.mu.Unlock()
		} else {
			setState(src, "active")
			setState(dst, "standby")
		}
		res.Listeners, res.Connections, res.Packets = int(rc.sum.Listeners), int(rc.sum.Conns), int(rc.sum.Packets)
		res.Batches, res.StateBytes = int(rc.sum.Batches), rc.sum.StateBytes
		if committed {
			return t.result(res, start, nil, &sum, committedNS, serveNS)
		}
		f := cause
		if f == nil {
			f = srcFailure
		}
		if f == nil {
			f = failure(wire.CodeInternal, "migration ended without a decision")
		}
		return t.result(res, start, f, &sum, 0, 0)
	}
	for {
		select {
		case ev := <-t.events:
			if ev.from == src {
				if ev.err != nil {
					srcGone = true
					if !exported {
						f := failure(wire.CodeSourceLost, "source %v went away before exporting everything: %v", src, ev.err)
						if cause == nil {
							cause = f
						}
						if !dstGone {
							_ = dst.send(wire.TypeAbort, t.id, f.Marshal(), nil)
						}
						return done()
					}
					if committed {
						if serveNS != 0 || dstGone {
							return done()
						}
						continue
					}
					// Exported, then exited: its copies are gone, so the
					// target takes over when it sees the pair close.
					t.log.Info("source exited after exporting; the target takes over")
					continue
				}
				m := ev.msg
				switch m.Type {
				case wire.TypeBatch:
					if exported {
						m.CloseFDs()
						abortSrc(failure(wire.CodeUnexpected, "batch after exported"))
						continue
					}
					if err := rc.check(m); err != nil {
						m.CloseFDs()
						abortSrc(failure(wire.CodeMalformed, "source sent a bad batch: %v", err))
						if !dstGone {
							_ = dst.send(wire.TypeAbort, t.id, cause.Marshal(), nil)
						}
						continue
					}
					if cause == nil && !dstGone {
						err := dst.conn.Send(wire.Msg{Header: wire.Header{Type: wire.TypeBatch, Flags: m.Flags, TxID: t.id, Seq: m.Seq}, Body: m.Body, FDs: m.FDs})
						if err != nil {
							abortSrc(failure(wire.CodeTargetLost, "relay batch %d to %v: %v", m.Seq, dst, err))
						}
					}
					t.a.m.fdsMoved.Add(float64(len(m.FDs)))
					m.CloseFDs()
					t.a.bodies.put(m.Body) // sent: the kernel has its copy
					t.fault("relayed-batch")
					if rc.sum.Batches%8 == 0 {
						progress("Transferring", fmt.Sprintf("%d batches relayed", rc.sum.Batches))
					}
				case wire.TypeExported:
					if err := sum.Unmarshal(m.Body); err != nil || rc.matches(sum) != nil {
						why := err
						if why == nil {
							why = rc.matches(sum)
						}
						abortSrc(failure(wire.CodeMalformed, "bad exported: %v", why))
						if !dstGone {
							_ = dst.send(wire.TypeAbort, t.id, cause.Marshal(), nil)
						}
						continue
					}
					exported = true
					if cause == nil && !dstGone {
						if err := dst.send(wire.TypeEnd, t.id, m.Body, nil); err != nil {
							abortSrc(failure(wire.CodeTargetLost, "send end to %v: %v", dst, err))
						}
					}
					t.fault("ended")
					progress("Transferring", fmt.Sprintf("exported %d listeners, %d connections, %d packet sockets in %d batches; waiting for the target", sum.Listeners, sum.Conns, sum.Packets, sum.Batches))
				case wire.TypeCommitted:
					var st wire.Stamp
					_ = st.Unmarshal(m.Body)
					committed, committedNS = true, st.MonoNS
					progress("Committed", "the source let go; waiting for the target to serve")
					if serveNS != 0 || dstGone {
						return done()
					}
					if grace == nil {
						grace = time.After(finalWordGrace)
					}
				case wire.TypeAbort:
					var f wire.Failure
					if err := f.Unmarshal(m.Body); err != nil {
						f = wire.Failure{Code: wire.CodeMalformed, Reason: err.Error()}
					}
					srcFailure = &f
					if !exported && !dstGone {
						_ = dst.send(wire.TypeAbort, t.id, f.Marshal(), nil)
					}
					// The source decides; after End the target hears it on
					// the pair.
					return done()
				default:
					m.CloseFDs()
					abortSrc(failure(wire.CodeUnexpected, "source sent %v during the migration", m.Type))
				}
				continue
			}
			// From the target.
			if ev.err != nil {
				dstGone = true
				if committed {
					t.log.Error(ev.err, "target went away after the commit")
					return done()
				}
				abortSrc(failure(wire.CodeTargetLost, "target %v went away before it was ready: %v", dst, ev.err))
				if srcGone || srcFailure != nil {
					return done()
				}
				continue
			}
			m := ev.msg
			m.CloseFDs()
			switch m.Type {
			case wire.TypeAbort:
				var f wire.Failure
				if err := f.Unmarshal(m.Body); err != nil {
					f = wire.Failure{Code: wire.CodeMalformed, Reason: err.Error()}
				}
				f.Reason = "target: " + f.Reason
				abortSrc(&f)
				if srcGone || srcFailure != nil {
					return done()
				}
			case wire.TypeServing:
				var st wire.Stamp
				_ = st.Unmarshal(m.Body)
				serveNS = st.MonoNS
				// The target serves only after the source's Commit on the
				// pair, or once the source left having exported
				// everything: the sockets are the target's now, even if
				// the source stopped before it could tell us.
				if !committed && !srcGone {
					t.log.V(1).Info("the target serves before the source confirmed its commit")
				}
				committed = true
				return done()
			default:
				abortSrc(failure(wire.CodeUnexpected, "target sent %v during the migration", m.Type))
			}
		case <-deadline.C:
			if committed {
				return done()
			}
			abortSrc(failure(wire.CodeDeadline, "deadline of %v passed before the target was ready", timeout))
			if !dstGone {
				_ = dst.send(wire.TypeAbort, t.id, cause.Marshal(), nil)
			}
			if grace == nil {
				grace = time.After(finalWordGrace)
			}
		case <-grace:
			if !committed && srcFailure == nil && cause != nil {
				cause.Reason += "; the source did not confirm the abort in time"
			}
			return done()
		}
	}
}

// result fills in the outcome and logs it.
func (t *txn) result(res admin.Result, start time.Time, f *wire.Failure, sum *wire.Summary, committedNS, serveNS uint64) admin.Result {
	res.DurationNS = int64(time.Since(start))
	if f != nil {
		res.Phase = PhaseFailed
		res.Reason = wire.CodeName(f.Code)
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
