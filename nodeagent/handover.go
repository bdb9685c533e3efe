package nodeagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/wire"
)

// Agent upgrades (docs/protocol.md, "Agent upgrades: handing over to a
// successor"). A new agent that finds a live one on its socket asks it,
// as an administrator, to hand over. The old agent refuses new
// transactions, waits for running ones to end, stops accepting, and sends
// its listening socket and every fd-store entry; the successor installs
// them and answers Taken, and the old agent closes its sessions and
// stops. Until Taken the old agent can go back to serving with nothing
// lost; from Taken on, the successor owns everything.

// ErrHandingOver means the agent is handing over to its successor and
// starts no new transaction.
var ErrHandingOver = errors.New("the agent is handing over to its successor")

// Bounds of a handover.
const (
	// handoverProgress is how often the old agent tells the successor
	// what it waits for; the successor's read deadline is a multiple.
	handoverProgress = time.Second
	// handoverSilence is how long the successor waits for the next
	// message of the old agent before it counts it as gone.
	handoverSilence = 10 * handoverProgress
	// handoverParkWait bounds how long the old agent waits for its accept
	// loop to stop.
	handoverParkWait = 5 * time.Second
)

// handoverTakenWait is how long the old agent waits for Taken after it
// sent everything, and for the successor to read what it sends (a
// variable for tests).
var handoverTakenWait = 30 * time.Second

// acceptGate stops the accept loop for a handover: the loop closes parked
// once it no longer accepts, and waits for resume (true: the successor
// took over, stop serving; false: accept again).
type acceptGate struct {
	parked chan struct{}
	resume chan bool
}

// fault calls Config.Fault, for steps outside a transaction.
func (a *Agent) fault(step string) {
	if a.cfg.Fault != nil {
		a.cfg.Fault(step)
	}
}

// parkAccept is the accept loop's side of the gate, after Accept timed
// out: it reports whether Serve should stop because a successor took
// over.
func (a *Agent) parkAccept(done <-chan struct{}) bool {
	a.mu.Lock()
	g := a.gate
	a.mu.Unlock()
	if g == nil {
		return false
	}
	select {
	case <-g.parked:
		// Parked already and resumed, and the deadline not yet cleared.
		return false
	default:
	}
	close(g.parked)
	select {
	case stop := <-g.resume:
		return stop
	case <-done:
		return false
	}
}

// HandedOver reports whether this agent handed everything to a successor
// (Serve has returned, or is about to, and the successor serves the
// socket).
func (a *Agent) HandedOver() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.handedOver
}

// HandingOver reports whether this agent is handing over to a successor
// or has handed over: it starts no new transaction.
func (a *Agent) HandingOver() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.handing || a.handedOver
}

// handoverOut is the old agent's side of a handover.
type handoverOut struct {
	a       *Agent
	s       *session // the successor's administrator session
	version uint16
	gate    *acceptGate
	entries []*stored
	fds     uint64
}

// handOver runs a handover to the successor on administrator session s.
// It reports whether the successor took over (Serve then stops).
func (a *Agent) handOver(s *session, req admin.Request) bool {
	h := &handoverOut{a: a, s: s}
	log := a.log.WithValues("successor", s.peer.PID)
	if err := h.agree(req); err != nil {
		log.Info("refused to hand over", "reason", err.Error())
		h.refuse(err)
		return false
	}
	log.Info("handing over to a successor", "format", h.version)
	if err := h.run(); err != nil {
		log.Error(err, "handover failed; serving on with everything this agent held")
		h.resume()
		return false
	}
	log.Info("handed over to the successor; stopping", "entries", len(h.entries), "descriptors", h.fds)
	a.mu.Lock()
	a.handedOver = true
	a.mu.Unlock()
	h.gate.resume <- true
	return true
}

// run is the handover, top-down; an error leaves everything to resume.
func (h *handoverOut) run() error {
	h.drain("transactions")
	if err := h.park(); err != nil {
		return err
	}
	// Sessions accepted before the loop stopped finish joining, and any
	// delivery from the store they started ends.
	h.drain("sessions joining")
	h.takeStore()
	if err := h.send(); err != nil {
		return err
	}
	if err := h.awaitTaken(); err != nil {
		return err
	}
	h.release()
	return nil
}

// agree picks the handover format and marks the agent as handing over,
// so that no new transaction starts.
func (h *handoverOut) agree(req admin.Request) error {
	lo, hi := max(req.HandoverMin, wire.HandoverMinVersion), min(req.HandoverMax, wire.HandoverMaxVersion)
	if req.HandoverMax == 0 || lo > hi {
		return fmt.Errorf("no common handover format: the successor reads %d..%d, this agent writes %d..%d",
			req.HandoverMin, req.HandoverMax, wire.HandoverMinVersion, wire.HandoverMaxVersion)
	}
	h.version = hi
	a := h.a
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.closed:
		return fmt.Errorf("agent is shutting down")
	case a.handing:
		return fmt.Errorf("agent is handing over to another successor already")
	}
	a.handing = true
	return nil
}

func (h *handoverOut) refuse(err error) {
	body, _ := json.Marshal(admin.Response{Error: "handover refused: " + err.Error()})
	_ = h.s.send(wire.TypeResponse, 0, body, nil)
}

func (h *handoverOut) progress(msg string) {
	b, _ := json.Marshal(admin.Progress{Phase: "HandingOver", Message: msg})
	_ = h.s.send(wire.TypeProgress, 0, b, nil)
}

// drain waits until no transaction runs and no session is joining,
// telling the successor every second what it waits for. Transactions end
// by their deadlines; none is cut.
func (h *handoverOut) drain(what string) {
	tick := time.NewTicker(10 * time.Millisecond) // polling interval of a bounded condition wait
	defer tick.Stop()
	last := time.Now()
	for {
		txns, joining := h.a.busy()
		if txns == 0 && joining == 0 {
			return
		}
		if time.Since(last) >= handoverProgress {
			h.progress(fmt.Sprintf("waiting for %s: %d transactions running, %d sessions joining", what, txns, joining))
			last = time.Now()
		}
		<-tick.C
	}
}

// busy counts the running transactions and the sessions still joining.
// Descriptors stored for a caller that waits for their delivery (an
// in-place restart's Migration) count as a transaction until a new
// process claims them or their hold ends: the caller's report of the
// outcome lives in this process, so they do not travel.
func (a *Agent) busy() (txns, joining int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	txns = len(a.storing) + a.answering
	for _, e := range a.store {
		if e.delivered != nil {
			txns++
		}
	}
	for _, s := range a.sessions {
		s.mu.Lock()
		if s.tx != nil {
			txns++
		}
		s.mu.Unlock()
	}
	return txns, a.joining
}

// park stops the accept loop: from here connects wait in the listener's
// backlog, for the successor (or for this agent, if the handover fails).
func (h *handoverOut) park() error {
	a := h.a
	h.gate = &acceptGate{parked: make(chan struct{}), resume: make(chan bool, 1)}
	a.mu.Lock()
	a.gate = h.gate
	a.mu.Unlock()
	if err := a.ln.SetDeadline(time.Now()); err != nil {
		return fmt.Errorf("stop accepting on %s: %w", a.cfg.Socket, err)
	}
	select {
	case <-h.gate.parked:
		return nil
	case <-time.After(handoverParkWait):
		return fmt.Errorf("stop accepting on %s: the accept loop did not stop within %v", a.cfg.Socket, handoverParkWait)
	}
}

// takeStore takes every entry out of the store and stops its hold timer:
// from here the entries travel. Entries whose hold ended are closed.
func (h *handoverOut) takeStore() {
	a := h.a
	var expired []*stored
	a.mu.Lock()
	for _, e := range a.store {
		if e.timer != nil {
			e.timer.Stop()
		}
		if time.Until(e.expires) <= 0 {
			expired = append(expired, e)
			continue
		}
		h.entries = append(h.entries, e)
		h.fds += uint64(e.fds())
	}
	a.store = map[storeKey]*stored{}
	a.mu.Unlock()
	for _, e := range expired {
		e.discard(a, "hold expired during a handover")
	}
	sort.Slice(h.entries, func(i, j int) bool { return h.entries[i].expires.Before(h.entries[j].expires) })
}

// send sends the listener, then each entry and its batches as stored.
func (h *handoverOut) send() error {
	a, s := h.a, h.s
	rc, err := a.ln.SyscallConn()
	if err != nil {
		return fmt.Errorf("send listener of %s: %w", a.cfg.Socket, err)
	}
	// A successor that stops reading must not hold this agent parked.
	s.conn.Unix().SetWriteDeadline(time.Now().Add(handoverTakenWait))
	defer s.conn.Unix().SetWriteDeadline(time.Time{})
	start := wire.Handover{Version: h.version, Entries: uint32(len(h.entries)), FDs: h.fds, Socket: a.cfg.Socket}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = s.send(wire.TypeHandover, 0, start.Marshal(), []int{int(fd)})
	}); err != nil {
		return fmt.Errorf("send listener of %s: %w", a.cfg.Socket, err)
	}
	if serr != nil {
		return fmt.Errorf("send listener of %s to the successor: %w", a.cfg.Socket, serr)
	}
	a.fault("handover-listener")
	for i, e := range h.entries {
		he := wire.HandoverEntry{Name: e.key.name, UID: e.key.uid, Pod: e.key.pod, HoldMS: holdMS(e.expires),
			Batches: uint32(len(e.batches)), Sum: e.sum}
		if err := s.send(wire.TypeHandoverEntry, uint64(i+1), he.Marshal(), nil); err != nil {
			return fmt.Errorf("send store entry %q to the successor: %w", e.key.name, err)
		}
		for _, b := range e.batches {
			m := wire.Msg{Header: wire.Header{Type: wire.TypeBatch, Flags: b.Flags, TxID: uint64(i + 1), Seq: b.Seq}, Body: b.Body, FDs: b.FDs}
			if err := s.conn.Send(m); err != nil {
				return fmt.Errorf("send batch %d of store entry %q to the successor: %w", b.Seq, e.key.name, err)
			}
		}
		a.fault("handover-entry")
	}
	return nil
}

// holdMS is what remains of a hold, in milliseconds, at least 1.
func holdMS(expires time.Time) uint64 {
	return uint64(max(time.Until(expires).Milliseconds(), 1))
}

// awaitTaken waits for the successor's word. Taken is the commit point:
// a Taken the successor could send is one this agent reads, since on a
// timeout the agent shuts the session before its last read (and a Taken
// sent after that fails at the successor).
func (h *handoverOut) awaitTaken() error {
	c := h.s.conn
	c.SetReadDeadline(time.Now().Add(handoverTakenWait))
	m, err := c.Recv()
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// From the shutdown on, the successor's Taken fails at its end;
		// one it sent before is still queued here, and read next.
		shutdown(c)
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		m, err = c.Recv()
		if err != nil {
			return fmt.Errorf("the successor did not take the handover within %v", handoverTakenWait)
		}
	}
	if err != nil {
		return fmt.Errorf("the successor went away before it took the handover: %w", err)
	}
	m.CloseFDs()
	switch m.Type {
	case wire.TypeTaken:
		var tk wire.Taken
		if err := tk.Unmarshal(m.Body); err != nil {
			return fmt.Errorf("successor's taken: %w", err)
		}
		if tk.Entries != uint32(len(h.entries)) || tk.FDs != h.fds {
			// It took them: ours are copies now either way, and its
			// count is what it serves. Say so loudly.
			h.a.log.Info("the successor counted differently from what was sent", "sentEntries", len(h.entries), "sentFDs", h.fds,
				"takenEntries", tk.Entries, "takenFDs", tk.FDs)
		}
		return nil
	case wire.TypeAbort:
		var f wire.Failure
		_ = f.Unmarshal(m.Body)
		return fmt.Errorf("the successor could not take the handover: %w", f)
	}
	return fmt.Errorf("the successor sent %v where taken was due", m.Type)
}

// shutdown shuts both directions of c: the peer's sends fail from here,
// and what it sent before can still be read.
func shutdown(c *wire.Conn) {
	if rc, err := c.Unix().SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RDWR) })
	}
}

// release closes this agent's copies of what the successor took.
func (h *handoverOut) release() {
	for _, e := range h.entries {
		e.gone = true
		n := e.fds()
		for i := range e.batches {
			e.batches[i].CloseFDs()
		}
		h.a.forgetSystemd(e)
		h.a.m.storedFDs.Sub(float64(n))
	}
}

// resume undoes the handover: the entries go back into the store with
// what remains of their holds, and the accept loop and transactions
// start again.
func (h *handoverOut) resume() {
	a := h.a
	a.mu.Lock()
	a.handing = false
	closed := a.closed
	var drop []*stored
	for _, e := range h.entries {
		if closed {
			drop = append(drop, e)
			continue
		}
		a.holdLocked(e)
	}
	a.gate = nil
	a.mu.Unlock()
	for _, e := range drop {
		e.discard(a, "agent shutting down")
	}
	if h.gate != nil {
		_ = a.ln.SetDeadline(time.Time{})
		h.gate.resume <- false
	}
}

// handoverIn is the successor's side of a handover.
type handoverIn struct {
	a     *Agent
	c     *wire.Conn
	start wire.Handover
	ln    *net.UnixListener
	took  []*stored
	fds   uint64
}

// errNoOldAgent means the agent on the socket went away before it sent
// its listener: the socket is stale, and the successor listens afresh.
var errNoOldAgent = errors.New("the agent on the socket went away before it handed over its listener")

// takeOver asks the agent serving the socket to hand over, and installs
// what it sends. Without an error the agent has its listener and its
// store. errNoOldAgent means nothing was handed over and the socket may be
// stale; any other error leaves the old agent serving.
func (a *Agent) takeOver() error {
	h := &handoverIn{a: a}
	err := h.run()
	switch {
	case h.ln == nil:
		return err
	case err != nil:
		// The old agent died mid-handover: serve with what arrived whole.
		a.log.Error(err, "the old agent went away during the handover; serving with what it handed over in full; descriptors of entries not fully received are lost",
			"entriesTaken", len(h.took), "entriesAnnounced", h.start.Entries)
	}
	a.ln = h.ln
	// Under systemd, into its fd store before anyone can claim them, as a
	// store does.
	for _, e := range h.took {
		a.pushEntry(e)
	}
	a.mu.Lock()
	for _, e := range h.took {
		a.m.storedFDs.Add(float64(e.fds()))
		a.holdLocked(e)
	}
	a.mu.Unlock()
	a.log.Info("took over from the old agent", "socket", a.cfg.Socket, "entries", len(h.took), "descriptors", h.fds)
	return nil
}

// run is the successor's handover, top-down.
func (h *handoverIn) run() error {
	if err := h.ask(); err != nil {
		return err
	}
	defer h.c.Close()
	lnfd, err := h.awaitHandover()
	if err != nil {
		return err
	}
	if err := h.checkRoom(); err != nil {
		wire.CloseAll([]int{lnfd})
		return h.abort(err)
	}
	if err := h.installListener(lnfd); err != nil {
		return h.abort(err)
	}
	for i := range h.start.Entries {
		if err := h.receiveEntry(uint64(i) + 1); err != nil {
			if errors.Is(err, wire.ErrClosed) {
				// The old agent is gone: keep what arrived whole. (A
				// silent one is still there, and gets an Abort.)
				return fmt.Errorf("receive store entry %d of %d: %w", i+1, h.start.Entries, err)
			}
			return h.abort(err)
		}
	}
	if err := h.c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeTaken}, Body: wire.Taken{Entries: uint32(len(h.took)), FDs: h.fds}.Marshal()}); err != nil {
		// The old agent stopped waiting and serves on with everything:
		// give it all back.
		h.dropAll()
		return fmt.Errorf("tell the old agent everything was taken: %w", err)
	}
	return nil
}

// ask opens an administrator session and asks for the handover.
func (h *handoverIn) ask() error {
	sock := h.a.cfg.Socket
	c, err := wire.Dial(sock)
	if err != nil {
		return fmt.Errorf("dial the agent serving %s: %w: %w", sock, errNoOldAgent, err)
	}
	hello := wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, Role: wire.RoleAdmin, Name: "nodeagent-successor"}
	if err := c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeHello}, Body: hello.Marshal()}); err != nil {
		c.Close()
		return fmt.Errorf("say hello to the agent serving %s: %w: %w", sock, errNoOldAgent, err)
	}
	c.SetReadDeadline(time.Now().Add(handoverSilence))
	m, err := c.Recv()
	if err != nil {
		c.Close()
		return fmt.Errorf("wait for the welcome of the agent serving %s: %w: %w", sock, errNoOldAgent, err)
	}
	m.CloseFDs()
	var w wire.Welcome
	if m.Type == wire.TypeError {
		var f wire.Failure
		_ = f.Unmarshal(m.Body)
		c.Close()
		return fmt.Errorf("the agent serving %s refused this one as its administrator: %w", sock, f)
	}
	if m.Type != wire.TypeWelcome || w.Unmarshal(m.Body) != nil {
		c.Close()
		return fmt.Errorf("the agent serving %s answered %v: %w", sock, m.Type, wire.ErrMalformed)
	}
	c.SetVersion(uint8(w.Version))
	req, _ := json.Marshal(admin.Request{Op: admin.OpHandover, HandoverMin: wire.HandoverMinVersion, HandoverMax: wire.HandoverMaxVersion})
	if err := c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeRequest}, Body: req}); err != nil {
		c.Close()
		return fmt.Errorf("ask the agent serving %s to hand over: %w", sock, err)
	}
	h.c = c
	return nil
}

// recv reads the old agent's next message; silence ends the handover.
func (h *handoverIn) recv() (wire.Msg, error) {
	h.c.SetReadDeadline(time.Now().Add(handoverSilence))
	return h.c.Recv()
}

// awaitHandover reads progress until the Handover message, and returns
// the listener it carries. A refusal leaves the old agent serving.
func (h *handoverIn) awaitHandover() (int, error) {
	sock := h.a.cfg.Socket
	for {
		m, err := h.recv()
		if err != nil {
			return -1, fmt.Errorf("wait for the handover of the agent serving %s: %w: %w", sock, errNoOldAgent, err)
		}
		switch m.Type {
		case wire.TypeProgress:
			m.CloseFDs()
			var p admin.Progress
			_ = json.Unmarshal(m.Body, &p)
			h.a.log.Info("the old agent prepares the handover", "message", p.Message)
		case wire.TypeResponse:
			m.CloseFDs()
			var r admin.Response
			_ = json.Unmarshal(m.Body, &r)
			if r.Error == "" {
				r.Error = "it answered without handing over"
			}
			return -1, fmt.Errorf("the agent serving %s did not hand over (it serves on): %s", sock, r.Error)
		case wire.TypeError:
			m.CloseFDs()
			var f wire.Failure
			_ = f.Unmarshal(m.Body)
			return -1, fmt.Errorf("the agent serving %s did not hand over (it serves on): %w", sock, f)
		case wire.TypeHandover:
			if err := h.start.Unmarshal(m.Body); err != nil || len(m.FDs) != 1 {
				m.CloseFDs()
				return -1, h.abort(fmt.Errorf("bad handover from the agent serving %s (%d descriptors): %w", sock, len(m.FDs), err))
			}
			if h.start.Version < wire.HandoverMinVersion || h.start.Version > wire.HandoverMaxVersion {
				m.CloseFDs()
				return -1, h.abort(fmt.Errorf("the agent serving %s chose handover format %d, this one reads %d..%d", sock, h.start.Version, wire.HandoverMinVersion, wire.HandoverMaxVersion))
			}
			return m.FDs[0], nil
		default:
			m.CloseFDs()
			return -1, h.abort(fmt.Errorf("the agent serving %s sent %v where the handover was due", sock, m.Type))
		}
	}
}

// checkRoom refuses a handover with more descriptors than this process
// may open.
func (h *handoverIn) checkRoom() error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read the open-file limit: %w", err)
	}
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("count open descriptors: %w", err)
	}
	if room := int64(lim.Cur) - int64(len(open)) - 64; int64(h.start.FDs) > room {
		return fmt.Errorf("the handover carries %d descriptors and this agent may open %d more (RLIMIT_NOFILE %d): raise the limit", h.start.FDs, max(room, 0), lim.Cur)
	}
	return nil
}

// installListener checks that the descriptor is a listening socket bound
// to this agent's path, and makes it the agent's listener.
func (h *handoverIn) installListener(fd int) error {
	ln, err := listenerFromFD(fd, h.a.cfg.Socket)
	if err != nil {
		return err
	}
	h.ln = ln
	return nil
}

// listenerFromFD makes fd (which it takes) a listener, after checking it
// is a listening SOCK_SEQPACKET unix socket bound to path.
func listenerFromFD(fd int, path string) (*net.UnixListener, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || typ != unix.SOCK_SEQPACKET {
		unix.Close(fd)
		return nil, fmt.Errorf("listener for %s: descriptor %d is no seqpacket socket (type %d): %v", path, fd, typ, err)
	}
	if acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || acc != 1 {
		unix.Close(fd)
		return nil, fmt.Errorf("listener for %s: descriptor %d is not listening: %v", path, fd, err)
	}
	sa, err := unix.Getsockname(fd)
	if ua, ok := sa.(*unix.SockaddrUnix); err != nil || !ok || ua.Name != path {
		unix.Close(fd)
		return nil, fmt.Errorf("listener for %s: descriptor %d is bound elsewhere (%v, %v)", path, fd, sa, err)
	}
	f := os.NewFile(uintptr(fd), "handoff-listener")
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("listener for %s: %w", path, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("listener for %s: not a unix listener", path)
	}
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

// receiveEntry reads one entry and its batches; only a whole entry is
// kept.
func (h *handoverIn) receiveEntry(id uint64) error {
	m, err := h.recv()
	if err != nil {
		return err
	}
	m.CloseFDs()
	var he wire.HandoverEntry
	if m.Type != wire.TypeHandoverEntry || m.TxID != id {
		return fmt.Errorf("the old agent sent %v (entry %d) where store entry %d was due", m.Type, m.TxID, id)
	}
	if err := he.Unmarshal(m.Body); err != nil {
		return fmt.Errorf("store entry %d: %w", id, err)
	}
	hold := time.Duration(he.HoldMS) * time.Millisecond
	e := &stored{key: storeKey{he.Name, he.UID, he.Pod}, sum: he.Sum, expires: time.Now().Add(hold), hold: hold}
	var rc relayCounter
	for range he.Batches {
		b, err := h.recv()
		if err == nil && (b.Type != wire.TypeBatch || b.TxID != id) {
			b.CloseFDs()
			err = fmt.Errorf("the old agent sent %v (entry %d) where a batch of store entry %q was due", b.Type, b.TxID, he.Name)
		}
		if err == nil {
			if cerr := rc.checkBatch(b); cerr != nil {
				b.CloseFDs()
				err = fmt.Errorf("store entry %q: %w", he.Name, cerr)
			}
		}
		if err != nil {
			for i := range e.batches {
				e.batches[i].CloseFDs()
			}
			return err
		}
		b.TxID = 0
		e.batches = append(e.batches, b)
	}
	if err := rc.matches(he.Sum); err != nil {
		for i := range e.batches {
			e.batches[i].CloseFDs()
		}
		return fmt.Errorf("store entry %q: %w", he.Name, err)
	}
	h.took = append(h.took, e)
	h.fds += uint64(e.fds())
	return nil
}

// abort tells the old agent this one cannot take the handover, gives
// back everything (the old agent keeps its own copies and serves on), and
// returns err.
func (h *handoverIn) abort(err error) error {
	f := wire.Failure{Code: wire.CodeImport, Reason: err.Error()}
	_ = h.c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort}, Body: f.Marshal()})
	h.dropAll()
	return fmt.Errorf("the agent serving %s serves on: %w", h.a.cfg.Socket, err)
}

// dropAll closes everything received: the old agent has it all.
func (h *handoverIn) dropAll() {
	for _, e := range h.took {
		for i := range e.batches {
			e.batches[i].CloseFDs()
		}
	}
	h.took, h.fds = nil, 0
	if h.ln != nil {
		h.ln.Close()
		h.ln = nil
	}
}
