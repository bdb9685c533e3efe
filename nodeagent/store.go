package nodeagent

import (
	"errors"
	"fmt"
	"time"

	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/wire"
)

// storeKey says who may claim stored descriptors: a process with the same
// name and, as the kernel reports it, the same uid as the one that left
// them.
type storeKey struct {
	name string
	uid  uint32
	pod  string // the pod UID under Kubernetes: a restart stays in its pod
}

// stored is the agent's fd store entry for one restarting process: the
// batches exactly as the source sent them, descriptors included.
type stored struct {
	key     storeKey
	batches []wire.Msg
	sum     wire.Summary
	expires time.Time
	hold    time.Duration // how long it was held for, from when it was stored (or handed over)
	timer   *time.Timer
	sdID    string // the entry's id in systemd's fd store, if it is kept there
	claimed bool
	gone    bool
	// delivered, if set, hears the entry's final outcome: its delivery, or
	// its discard.
	delivered func(admin.Result)
}

func (e *stored) fds() int {
	n := 0
	for _, b := range e.batches {
		n += len(b.FDs)
	}
	return n
}

// discard closes every stored descriptor. Connections among them are
// closed for good: that is why it is logged loudly.
func (e *stored) discard(a *Agent, why string) {
	if e.gone {
		return
	}
	e.gone = true
	if e.timer != nil {
		e.timer.Stop()
	}
	n := e.fds()
	for i := range e.batches {
		e.batches[i].CloseFDs()
	}
	a.forgetSystemd(e)
	a.m.storedFDs.Sub(float64(n))
	a.log.Info("closing stored descriptors", "name", e.key.name, "uid", e.key.uid, "listeners", e.sum.Listeners,
		"connections", e.sum.Conns, "packets", e.sum.Packets, "reason", why)
	if e.delivered != nil {
		e.delivered(admin.Result{Phase: PhaseFailed, Code: wire.CodeNotClaimed, Reason: wire.CodeNotClaimed.String(), Message: fmt.Sprintf("stored descriptors closed: %s", why),
			Listeners: int(e.sum.Listeners), Connections: int(e.sum.Conns), Packets: int(e.sum.Packets)})
	}
}

// claimStored reserves the store entry s may claim. Called with a.mu held.
func (a *Agent) claimStored(s *session) *stored {
	e := a.store[storeKey{s.name, s.peer.UID, s.ident.PodUID}]
	if e == nil || e.claimed {
		return nil
	}
	e.claimed = true
	return e
}

// release gives a claimed entry back after a failed delivery; an entry
// whose hold expired meanwhile is discarded.
func (a *Agent) release(e *stored) {
	a.mu.Lock()
	e.claimed = false
	expired := !time.Now().Before(e.expires)
	if expired {
		delete(a.store, e.key)
	}
	a.mu.Unlock()
	if expired {
		e.discard(a, "hold expired during a failed delivery")
	}
}

// StoreFrom moves session from's sockets into the agent's fd store, where
// the next process with the same name and uid (and, under Kubernetes, in
// the same pod) claims them, for up to hold.
func (a *Agent) StoreFrom(from uint64, what uint32, timeout, hold time.Duration, progress func(phase, msg string)) (admin.Result, error) {
	return a.StoreFromWith(from, what, timeout, hold, progress, StoreOptions{})
}

// StoreOptions are the hooks of StoreFromWith.
type StoreOptions struct {
	// BeforeReady runs once the store holds every descriptor and before
	// the source is told to let go; an error aborts, and the source
	// resumes. The Kubernetes agent patches the container's image here,
	// so the restart cannot begin before the descriptors are safe.
	BeforeReady func() error
	// Delivered hears the final outcome of the stored descriptors: a
	// Completed result when a new process took them, a Failed one when
	// they were closed unclaimed. It runs on the agent's goroutines.
	Delivered func(admin.Result)
}

// StoreFromWith is StoreFrom with hooks.
func (a *Agent) StoreFromWith(from uint64, what uint32, timeout, hold time.Duration, progress func(phase, msg string), opts StoreOptions) (admin.Result, error) {
	if progress == nil {
		progress = func(string, string) {}
	}
	if hold <= 0 {
		hold = a.cfg.StoreHold
	}
	a.mu.Lock()
	src := a.sessions[from]
	if src == nil {
		a.mu.Unlock()
		return admin.Result{}, fmt.Errorf("source session %d: %w", from, ErrNoSession)
	}
	if a.handing {
		a.mu.Unlock()
		return admin.Result{}, fmt.Errorf("store from session %d: %w", from, ErrHandingOver)
	}
	key := storeKey{src.name, src.peer.UID, src.ident.PodUID}
	if _, ok := a.store[key]; ok {
		a.mu.Unlock()
		return admin.Result{}, fmt.Errorf("descriptors are already stored for name %q uid %d: %w", key.name, key.uid, ErrBusy)
	}
	// Reserved until the entry is stored or the store fails: a second
	// store of the same key would otherwise replace this one's entry
	// and leave its descriptors open with nothing to close them.
	if _, ok := a.storing[key]; ok {
		a.mu.Unlock()
		return admin.Result{}, fmt.Errorf("descriptors are being stored for name %q uid %d: %w", key.name, key.uid, ErrBusy)
	}
	t := a.newTxn()
	if err := attach(t, src); err != nil {
		a.mu.Unlock()
		return admin.Result{}, err
	}
	a.storing[key] = struct{}{}
	a.mu.Unlock()
	defer t.finish(src)
	t.log = t.log.WithValues("source", src.id, "target", "store")
	res, e := t.collect(src, what, timeout, progress, opts.BeforeReady)
	a.record(t.log, res)
	if e == nil {
		a.mu.Lock()
		delete(a.storing, key)
		a.mu.Unlock()
		return res, nil
	}
	e.expires, e.hold = time.Now().Add(hold), hold
	e.delivered = opts.Delivered
	a.m.storedFDs.Add(float64(e.fds()))
	// Into systemd's fd store before anyone can claim it: a claim then
	// always finds it there to remove.
	a.pushEntry(e)
	a.mu.Lock()
	delete(a.storing, key)
	if a.closed {
		// Shutdown has closed the store already: nothing would close
		// these.
		a.mu.Unlock()
		e.discard(a, "agent shutting down")
		return res, nil
	}
	a.holdLocked(e)
	// A matching process already waiting in standby gets them at once.
	var waiting *session
	for _, s := range a.sessions {
		s.mu.Lock()
		ok := s.standby && s.tx == nil && s.name == key.name && s.peer.UID == key.uid && s.ident.PodUID == key.pod
		s.mu.Unlock()
		if ok && (waiting == nil || s.id < waiting.id) {
			waiting = s
		}
	}
	if waiting != nil {
		e.claimed = true
	}
	a.mu.Unlock()
	t.log.Info("descriptors stored", "name", key.name, "uid", key.uid, "hold", hold.String())
	if waiting != nil {
		a.startDelivery(waiting, e)
	}
	return res, nil
}

// errPairClosed is the pair closing without a word from the source.
var errPairClosed = errors.New("pair closed")

// collect runs a source → store transaction; the agent plays the target
// on the pair. collector holds its state; run reads top-down: prepare,
// then one method per event until the store holds everything or it failed.
func (t *txn) collect(src *session, what uint32, timeout time.Duration, progress func(phase, msg string), beforeReady func() error) (admin.Result, *stored) {
	c := &collector{t: t, src: src, progress: progress, beforeReady: beforeReady, timeout: timeout,
		start: time.Now(), res: admin.Result{TxID: t.id, From: src.id},
		e: &stored{key: storeKey{src.name, src.peer.UID, src.ident.PodUID}}}
	return c.run(what)
}

// collector is a source → store transaction.
//
// Once the agent has sent Ready, the source may let go at any moment: its
// Commit can be on its way whatever the agent decides meanwhile. From
// then on only the source's word on the pair decides — Commit keeps the
// descriptors, Abort drops them, the pair closing keeps them (the source
// exited: ours are the only copies). The agent's own deadline, or a
// message it refuses, can only ask the source to abort; if the source
// says nothing within finalWordGrace, the agent shuts the pair's read
// side: a Commit already queued is still read and honoured, and a later
// one fails at the source, which then keeps serving.
//
//	event            before Ready (exported false)             after Ready
//	source Batch     check, count, keep                        ask the source to abort (UnexpectedMessage)
//	source Exported  check; BeforeReady; Ready on the pair     -
//	source Abort     failed with its reason                    (its word follows on the pair)
//	source gone      SourceLost                                (the pair tells)
//	word on the pair -                                         Commit or close: stored; Abort: failed
//	deadline         Abort to the source: DeadlineExceeded     ask the source to abort
//	grace ends       -                                         shut the pair's read side
//
// The result's pause runs from the source's freeze to its letting go as
// the agent saw it; the delivery to a claimant reports the whole pause,
// up to the claimant serving.
type collector struct {
	t           *txn
	src         *session
	progress    func(phase, msg string)
	beforeReady func() error
	timeout     time.Duration
	start       time.Time
	res         admin.Result
	e           *stored
	pair        *wire.Conn

	rc relayCounter
	// word, once Ready is sent, brings the source's word on the pair: nil
	// for Commit, errPairClosed, or why it aborted.
	word  chan error
	letGo uint64        // when word came (CLOCK_MONOTONIC, like the source's freeze stamp)
	cause *wire.Failure // why the agent asked the source to abort after Ready
	grace <-chan time.Time
	shut  bool // the agent shut the pair's read side: the source can no longer commit
}

// outcome is how an event ended the transaction: stored, or failed.
type outcome struct {
	res admin.Result
	e   *stored
}

func (c *collector) run(what uint32) (admin.Result, *stored) {
	t, src := c.t, c.src
	pa, pb, err := wire.Pair()
	if err != nil {
		return c.fail(failure(wire.CodeInternal, "%v", err))
	}
	c.pair, err = wire.FromFD(pb, "handoff-pair")
	if err != nil {
		wire.CloseAll([]int{pa})
		return c.fail(failure(wire.CodeInternal, "%v", err))
	}
	defer c.pair.Close()
	setState(src, "storing")
	c.progress("Preparing", fmt.Sprintf("asking %v to freeze and export to the agent's store", src))
	err = src.send(wire.TypePrepare, t.id, wire.Prepare{What: what, TimeoutMS: uint32(c.timeout / time.Millisecond)}.Marshal(), []int{pa})
	wire.CloseAll([]int{pa})
	if err != nil {
		return c.fail(failure(wire.CodeSourceLost, "send prepare to %v: %v", src, err))
	}
	deadline := time.NewTimer(c.timeout)
	defer deadline.Stop()
	for {
		var o *outcome
		select {
		case ev := <-t.events:
			if ev.err != nil {
				o = c.sourceGone(ev.err)
			} else {
				o = c.fromSource(ev.msg)
			}
		case err := <-c.word:
			o = c.onWord(err)
		case <-deadline.C:
			o = c.deadline()
		case <-c.grace:
			c.graceOver()
		}
		if o != nil {
			return o.res, o.e
		}
	}
}

// fail drops what was collected and reports f.
func (c *collector) fail(f *wire.Failure) (admin.Result, *stored) {
	for i := range c.e.batches {
		c.e.batches[i].CloseFDs()
	}
	setState(c.src, "active")
	return c.t.result(c.res, c.start, f, nil, 0, 0), nil
}

func (c *collector) failed(f *wire.Failure) *outcome {
	res, e := c.fail(f)
	return &outcome{res, e}
}

// abort tells the source, before Ready, and fails.
func (c *collector) abort(f *wire.Failure) *outcome {
	_ = c.src.send(wire.TypeAbort, c.t.id, f.Marshal(), nil)
	return c.failed(f)
}

// askAbort is abort after Ready: the source decides.
func (c *collector) askAbort(f *wire.Failure) {
	if c.cause != nil {
		return
	}
	c.cause = f
	c.t.log.Info("asking the source to abort after the store was ready; its word on the pair decides", "reason", f.Reason)
	_ = c.pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: c.t.id}, Body: f.Marshal()})
	_ = c.src.send(wire.TypeAbort, c.t.id, f.Marshal(), nil)
	c.grace = time.After(finalWordGrace)
}

func (c *collector) sourceGone(err error) *outcome {
	if c.word != nil {
		return nil // exported: the pair tells the outcome
	}
	return c.failed(failure(wire.CodeSourceLost, "source %v went away before exporting everything: %v", c.src, err))
}

func (c *collector) fromSource(m wire.Msg) *outcome {
	if c.word != nil {
		m.CloseFDs()
		switch m.Type {
		case wire.TypeAbort, wire.TypeCommitted:
			// The same decision follows, or came, on the pair.
		default:
			c.askAbort(failure(wire.CodeUnexpected, "source sent %v after the store was ready", m.Type))
		}
		return nil
	}
	switch m.Type {
	case wire.TypeBatch:
		if err := c.rc.checkBatch(m); err != nil {
			m.CloseFDs()
			return c.abort(failure(wire.CodeMalformed, "source sent a bad batch: %v", err))
		}
		c.e.batches = append(c.e.batches, m)
		c.t.a.m.fdsMoved.Add(float64(len(m.FDs)))
	case wire.TypeExported:
		return c.exported(m)
	case wire.TypeAbort:
		m.CloseFDs()
		var f wire.Failure
		_ = f.Unmarshal(m.Body)
		return c.failed(&f)
	case wire.TypeCommitted:
		m.CloseFDs()
	default:
		m.CloseFDs()
		return c.abort(failure(wire.CodeUnexpected, "source sent %v while storing", m.Type))
	}
	return nil
}

// exported checks the source's totals, runs BeforeReady, and tells the
// source the store is ready; its word on the pair then decides.
func (c *collector) exported(m wire.Msg) *outcome {
	if err := c.e.sum.Unmarshal(m.Body); err != nil {
		return c.abort(failure(wire.CodeMalformed, "bad exported: %v", err))
	}
	if err := c.rc.matches(c.e.sum); err != nil {
		return c.abort(failure(wire.CodeMalformed, "bad exported: %v", err))
	}
	if c.beforeReady != nil {
		if err := c.beforeReady(); err != nil {
			return c.abort(failure(wire.CodeCancelled, "before the source let go: %v", err))
		}
	}
	if err := c.pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeReady, TxID: c.t.id}, Body: c.e.sum.Marshal()}); err != nil {
		// The source closed its end: it aborted, and its Abort waits on
		// the pair, or it died after exporting everything (a container
		// killed right after its image was patched), and then the agent
		// holds the only copies. Reading the pair tells which.
		c.t.log.Info("could not tell the source the store is ready; reading what it left on the pair", "error", err.Error())
	}
	c.word = make(chan error, 1)
	go func() {
		m, err := c.pair.Recv()
		if err == nil {
			m.CloseFDs()
			switch m.Type {
			case wire.TypeCommit:
			case wire.TypeAbort:
				var f wire.Failure
				_ = f.Unmarshal(m.Body)
				err = f
			default:
				err = fmt.Errorf("%v on the pair", m.Type)
			}
		} else if errors.Is(err, wire.ErrClosed) {
			err = errPairClosed
		}
		c.letGo = wire.Monotonic()
		c.word <- err
	}()
	return nil
}

// onWord is the source's word on the pair after Ready.
func (c *collector) onWord(err error) *outcome {
	switch {
	case errors.Is(err, errPairClosed) && c.shut:
		c.cause.Reason += "; the source did not answer in time"
		return c.failed(c.cause)
	case err != nil && !errors.Is(err, errPairClosed):
		if c.cause != nil {
			return c.failed(c.cause)
		}
		return c.failed(failure(wire.CodeExport, "source aborted: %v", err))
	}
	// Committed, or exited after exporting: either way the source let
	// go, and the agent's are the only copies.
	if c.cause != nil {
		c.t.log.Info("the source let go before it heard the abort: keeping its descriptors", "abortReason", c.cause.Reason)
	}
	setState(c.src, "moved")
	got := c.rc.Summary()
	c.res.Listeners, c.res.Connections, c.res.Packets = int(got.Listeners), int(got.Conns), int(got.Packets)
	c.res.Batches, c.res.StateBytes = int(got.Batches), got.StateBytes
	c.progress("Stored", fmt.Sprintf("holding %d descriptors", c.e.fds()))
	return &outcome{c.t.result(c.res, c.start, nil, &c.e.sum, c.letGo, 0), c.e}
}

func (c *collector) deadline() *outcome {
	f := failure(wire.CodeDeadline, "deadline of %v passed while storing", c.timeout)
	if c.word == nil {
		// Before Ready the source cannot have let go.
		_ = c.pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: c.t.id}, Body: f.Marshal()})
		return c.abort(f)
	}
	c.askAbort(f)
	return nil
}

// graceOver shuts the pair's read side: the source had its time.
func (c *collector) graceOver() {
	c.grace, c.shut = nil, true
	if err := c.pair.Unix().CloseRead(); err != nil {
		// Closing unblocks the reader too; a queued Commit is lost with
		// it, but there is no other way to end the wait.
		c.t.log.Error(err, "shut the read side of the pair")
		c.pair.Close()
	}
}

// holdLocked puts e into the store until e.expires, when it is closed
// unless a process claimed it. Called with a.mu held.
func (a *Agent) holdLocked(e *stored) {
	key := e.key
	a.store[key] = e
	e.timer = time.AfterFunc(time.Until(e.expires), func() {
		a.mu.Lock()
		cur := a.store[key]
		drop := cur == e && !e.claimed
		if drop {
			delete(a.store, key)
		}
		a.mu.Unlock()
		if drop {
			e.discard(a, fmt.Sprintf("no process named %q with uid %d claimed them within %v", key.name, key.uid, e.hold))
		}
	})
}

// startDelivery hands stored descriptors to a newly joined process with
// the same name and uid. On failure the entry stays stored.
func (a *Agent) startDelivery(s *session, e *stored) {
	a.mu.Lock()
	t := a.newTxn()
	err := attach(t, s)
	a.mu.Unlock()
	if err != nil {
		a.release(e)
		return
	}
	t.log = t.log.WithValues("source", "store", "target", s.id, "name", e.key.name)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer t.finish(s)
		res := t.deliverStored(s, e)
		a.record(t.log, res)
		if res.Phase == PhaseCompleted && e.delivered != nil {
			e.delivered(res)
		}
	}()
}

func (t *txn) deliverStored(s *session, e *stored) admin.Result {
	a := t.a
	start := time.Now()
	res := admin.Result{TxID: t.id, To: s.id}
	fail := func(f *wire.Failure) admin.Result {
		setState(s, "standby")
		a.release(e)
		return t.result(res, start, f, nil, 0, 0)
	}
	pa, pb, err := wire.Pair()
	if err != nil {
		return fail(failure(wire.CodeInternal, "%v", err))
	}
	pair, err := wire.FromFD(pb, "handoff-pair")
	if err != nil {
		wire.CloseAll([]int{pa})
		return fail(failure(wire.CodeInternal, "%v", err))
	}
	defer pair.Close()
	timeout := a.cfg.MigrateTimeout
	setState(s, "migrating-in")
	err = s.send(wire.TypeBegin, t.id, wire.Begin{TimeoutMS: uint32(timeout / time.Millisecond), SourceName: e.key.name}.Marshal(), []int{pa})
	wire.CloseAll([]int{pa})
	if err != nil {
		return fail(failure(wire.CodeTargetLost, "send begin to %v: %v", s, err))
	}
	for _, b := range e.batches {
		if err := s.conn.Send(wire.Msg{Header: wire.Header{Type: wire.TypeBatch, Flags: b.Flags, TxID: t.id, Seq: b.Seq}, Body: b.Body, FDs: b.FDs}); err != nil {
			return fail(failure(wire.CodeTargetLost, "send stored batch %d to %v: %v", b.Seq, s, err))
		}
	}
	if err := s.send(wire.TypeEnd, t.id, e.sum.Marshal(), nil); err != nil {
		return fail(failure(wire.CodeTargetLost, "send end to %v: %v", s, err))
	}
	ready := make(chan error, 1)
	go func() {
		m, err := pair.Recv()
		if err == nil {
			m.CloseFDs()
			if m.Type != wire.TypeReady {
				err = fmt.Errorf("%v on the pair, expected ready", m.Type)
			}
		}
		ready <- err
	}()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	committed := false
	var grace <-chan time.Time
	for {
		select {
		case err := <-ready:
			if err != nil {
				return fail(failure(wire.CodeTargetLost, "target %v went away before it was ready: %v", s, err))
			}
			if err := pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeCommit, TxID: t.id}}); err != nil {
				return fail(failure(wire.CodeTargetLost, "commit to %v: %v", s, err))
			}
			committed = true
			a.mu.Lock()
			if a.store[e.key] == e {
				delete(a.store, e.key)
			}
			a.mu.Unlock()
			e.gone = true
			e.timer.Stop()
			n := e.fds()
			for i := range e.batches {
				e.batches[i].CloseFDs()
			}
			a.forgetSystemd(e)
			a.m.storedFDs.Sub(float64(n))
			s.mu.Lock()
			s.standby = false
			s.mu.Unlock()
			setState(s, "active")
			res.Listeners, res.Connections, res.Packets = int(e.sum.Listeners), int(e.sum.Conns), int(e.sum.Packets)
			res.Batches, res.StateBytes = int(e.sum.Batches), e.sum.StateBytes
			grace = time.After(finalWordGrace)
		case ev := <-t.events:
			if ev.err != nil {
				if committed {
					return t.result(res, start, nil, &e.sum, 0, 0)
				}
				return fail(failure(wire.CodeTargetLost, "target %v went away: %v", s, ev.err))
			}
			m := ev.msg
			m.CloseFDs()
			switch m.Type {
			case wire.TypeServing:
				var st wire.Stamp
				_ = st.Unmarshal(m.Body)
				return t.result(res, start, nil, &e.sum, 0, st.MonoNS)
			case wire.TypeAbort:
				if committed {
					continue
				}
				var f wire.Failure
				_ = f.Unmarshal(m.Body)
				f.Reason = "target: " + f.Reason
				return fail(&f)
			}
		case <-deadline.C:
			if committed {
				continue
			}
			_ = pair.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: t.id}, Body: failure(wire.CodeDeadline, "deadline").Marshal()})
			return fail(failure(wire.CodeDeadline, "deadline of %v passed before %v was ready", timeout, s))
		case <-grace:
			return t.result(res, start, nil, &e.sum, 0, 0)
		}
	}
}
