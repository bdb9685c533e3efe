// Package nodeagent is the handoff node agent: the one privileged piece.
// It serves the unix socket applications join, learns who each peer is
// from the kernel, and runs each migration as a transaction between a
// source and a target process (or its own fd store, for in-place
// restarts). This package holds the standalone agent; the Kubernetes
// reconciler drives the same engine.
package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/nodeagent/podid"
	"github.com/handoff-dev/handoff/wire"
)

// Defaults for Config.
const (
	DefaultSocket         = "/run/handoff/agent.sock"
	DefaultSocketMode     = 0o660
	DefaultDirMode        = 0o750
	DefaultHelloTimeout   = 5 * time.Second
	DefaultMigrateTimeout = 60 * time.Second
	DefaultStoreHold      = 60 * time.Second
)

// Config configures an Agent. Zero fields take the defaults above.
type Config struct {
	// Socket is the path of the unix socket applications join.
	Socket string
	// SocketMode and DirMode are the permissions of the socket and of its
	// directory if the agent creates it; an existing directory keeps its
	// mode.
	SocketMode, DirMode os.FileMode
	// HelloTimeout closes peers that connect and say nothing.
	HelloTimeout time.Duration
	// MigrateTimeout is a migration's deadline when the request sets none.
	MigrateTimeout time.Duration
	// StoreHold is how long stored descriptors wait for a claimant.
	StoreHold time.Duration
	// Log receives structured logs.
	Log logr.Logger
	// Metrics receives counters; nil creates a private registry.
	Metrics *Metrics
	// OnResult, if set, is called with the outcome of every transaction,
	// including deliveries from the store that no request waits for.
	OnResult func(admin.Result)
	// OnJoin, if set, is called when an application session has joined.
	OnJoin func(admin.Session)
	// Identify, if set, maps a joining peer to its pod and container from
	// the kernel (the Kubernetes agent sets it; standalone leaves it nil).
	// A peer it cannot identify still joins, without a pod identity.
	// With it set, administrators are only accepted from the node itself
	// (Identify says podid.ErrNotInPod) or from the agent's own container:
	// a root process in an application's pod reaches the socket too, and
	// must not move other pods' connections.
	Identify func(pid int32, pidfd int) (podid.Identity, error)
	// Successor, if set, reports whether a process in another pod is the
	// agent's successor, which may administer it (to ask for a handover):
	// under Kubernetes, the agent's container in another pod of its own
	// DaemonSet. It gets the agent's own identity and the peer's, and
	// says why (for the log and the refusal).
	Successor func(self, peer podid.Identity) (bool, string)
	// Predecessor, if set, answers a process that asks (HelloAsk) whether
	// a predecessor will hand over to it: wait in standby, and why (for
	// the log). It gets the peer's identity from Identify (zero without
	// one). The Kubernetes agent decides from the pod; standalone leaves
	// it nil, and asking processes start fresh.
	Predecessor func(id podid.Identity) (wait bool, why string)
	// Fault, if set, is called at each step of a transaction ("prepared",
	// "relayed-batch", "ended"): fault-injection tests use it to kill or
	// stall the agent at an exact point. Leave it nil in production.
	Fault func(step string)
	// Systemd, if set (SystemdFromEnv), is systemd's service environment:
	// the agent says READY=1, keeps its listener and its store in
	// systemd's fd store, and takes them back when systemd passes them.
	Systemd *Systemd
}

// Agent serves the agent socket.
type Agent struct {
	cfg Config
	log logr.Logger
	m   *Metrics
	ln  *net.UnixListener

	mu       sync.Mutex
	sessions map[uint64]*session
	admins   map[*session]struct{} // closed on shutdown like sessions

	selfOnce sync.Once
	self     *podid.Identity // the agent's own container, if it runs in one
	store    map[storeKey]*stored
	storing  map[storeKey]struct{} // keys of stores still collecting: one at a time per key
	nextID   uint64
	nextTx   uint64
	closed   bool
	joined   *sync.Cond // broadcast when a session joins
	// Agent upgrades (handover.go): joining counts sessions accepted and
	// not yet welcomed; handing is set while this agent hands over to a
	// successor, which gate parks the accept loop for; handedOver once
	// the successor took everything.
	joining    int
	answering  int // administrator requests being answered
	handing    bool
	gate       *acceptGate
	handedOver bool
	takingOver bool   // Listen waits for the agent serving the socket to hand over
	listening  bool   // Listen has set up the listener
	sdListener bool   // the listener is kept in systemd's fd store (systemd.go)
	bodies     bodies // relayed batch bodies, recycled
	wg         sync.WaitGroup
}

// New prepares an agent; Serve starts it.
func New(cfg Config) *Agent {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = DefaultSocketMode
	}
	if cfg.DirMode == 0 {
		cfg.DirMode = DefaultDirMode
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = DefaultHelloTimeout
	}
	if cfg.MigrateTimeout <= 0 {
		cfg.MigrateTimeout = DefaultMigrateTimeout
	}
	if cfg.StoreHold <= 0 {
		cfg.StoreHold = DefaultStoreHold
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	a := &Agent{cfg: cfg, log: cfg.Log, m: cfg.Metrics, sessions: map[uint64]*session{}, admins: map[*session]struct{}{}, store: map[storeKey]*stored{}, storing: map[storeKey]struct{}{}}
	a.joined = sync.NewCond(&a.mu)
	return a
}

// Listen creates the socket with an explicit mode, and its directory
// with DirMode if the directory does not exist yet. A stale socket file
// left by a dead agent is replaced; a live one is not.
func (a *Agent) Listen() error {
	dir := filepath.Dir(a.cfg.Socket)
	if err := os.MkdirAll(filepath.Dir(dir), a.cfg.DirMode); err != nil {
		return fmt.Errorf("create parent of socket directory %s: %w", dir, err)
	}
	// Only a directory the agent creates is its own to set: one that
	// exists already (/tmp, a mounted volume) keeps the mode its owner
	// gave it. The chmod makes the new one's mode exact despite the umask.
	switch err := os.Mkdir(dir, a.cfg.DirMode); {
	case err == nil:
		if err := os.Chmod(dir, a.cfg.DirMode); err != nil {
			return fmt.Errorf("set mode of socket directory %s: %w", dir, err)
		}
	case errors.Is(err, fs.ErrExist):
		fi, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("socket directory %s: %w", dir, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("socket directory %s is not a directory", dir)
		}
	default:
		return fmt.Errorf("create socket directory %s: %w", dir, err)
	}
	fromSystemd := a.cfg.Systemd != nil && a.listenFromSystemd()
	took := fromSystemd
	if !took {
		var err error
		if took, err = a.takeOverIfServed(); err != nil {
			return err
		}
	}
	if !took {
		ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: a.cfg.Socket, Net: "unixpacket"})
		if err != nil {
			return fmt.Errorf("listen on %s: %w", a.cfg.Socket, err)
		}
		if err := os.Chmod(a.cfg.Socket, a.cfg.SocketMode); err != nil {
			ln.Close()
			return fmt.Errorf("set mode of socket %s: %w", a.cfg.Socket, err)
		}
		a.ln = ln
	}
	// Relaying and storing descriptors must not grow the table mid-pause.
	if _, err := wire.ReserveFDTable(); err != nil {
		a.log.Error(err, "could not pre-size the descriptor table")
	}
	if a.cfg.Systemd != nil {
		a.rebuildFromSystemd()
		if !fromSystemd {
			a.pushListener()
		}
		if err := a.cfg.Systemd.ready(a.cfg.Socket); err != nil {
			a.log.Error(err, "could not tell systemd the agent is ready")
		}
	}
	a.mu.Lock()
	a.listening = true
	a.mu.Unlock()
	a.log.Info("agent listening", "socket", a.cfg.Socket, "mode", fmt.Sprintf("%#o", a.cfg.SocketMode))
	return nil
}

func (a *Agent) setTakingOver(v bool) {
	a.mu.Lock()
	a.takingOver = v
	a.mu.Unlock()
}

// takeOverIfServed deals with what is at the socket path: nothing; a
// stale socket file left by a dead agent, which it removes; or a live
// agent, which it asks to hand over (handover.go). It reports whether
// the agent took over a listener.
func (a *Agent) takeOverIfServed() (bool, error) {
	if _, err := os.Lstat(a.cfg.Socket); err != nil {
		return false, nil
	}
	if c, err := net.Dial("unixpacket", a.cfg.Socket); err == nil {
		c.Close()
		a.setTakingOver(true)
		err := a.takeOver()
		a.setTakingOver(false)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, errNoOldAgent) {
			return false, fmt.Errorf("listen on %s: another agent serves it and did not hand over: %w", a.cfg.Socket, err)
		}
		if c, derr := net.Dial("unixpacket", a.cfg.Socket); derr == nil {
			c.Close()
			return false, fmt.Errorf("listen on %s: another agent serves it and did not hand over: %w", a.cfg.Socket, err)
		}
		a.log.Info("the agent serving the socket went away before it handed over; listening afresh", "reason", err.Error())
	}
	if err := os.Remove(a.cfg.Socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("remove stale socket %s: %w", a.cfg.Socket, err)
	}
	return false, nil
}

// Serve accepts sessions until ctx ends, then closes every session and
// every stored descriptor. It calls Listen if that was not done. It also
// returns, with nil, once a successor took over (handover.go): then the
// socket stays, served by the successor.
func (a *Agent) Serve(ctx context.Context) error {
	if a.ln == nil {
		if err := a.Listen(); err != nil {
			return err
		}
	}
	lnClosed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		a.ln.Close()
		close(lnClosed)
	})
	defer stop()
	for {
		uc, err := a.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				// Accept fails as soon as Close begins, but the descriptor
				// is released only when Close returns: wait for it, so
				// that nothing of the agent is left open once Serve
				// returns.
				if stop() {
					a.ln.Close()
				} else {
					<-lnClosed
				}
				a.shutdown()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if a.parkAccept(ctx.Done()) {
					// The successor serves the listener now: close this
					// agent's copy without removing the path.
					a.ln.SetUnlinkOnClose(false)
					if stop() {
						a.ln.Close()
					} else {
						<-lnClosed
					}
					a.shutdown()
					return nil
				}
				continue
			}
			// EMFILE and friends: log, back off briefly, keep serving.
			a.log.Error(err, "accept failed")
			time.Sleep(50 * time.Millisecond)
			continue
		}
		a.wg.Add(1)
		a.mu.Lock()
		a.joining++
		a.mu.Unlock()
		go func() {
			defer a.wg.Done()
			a.serveSession(uc)
		}()
	}
}

func (a *Agent) shutdown() {
	a.mu.Lock()
	a.closed = true
	// After a handover (or during one) the listener serves on in the
	// successor, and under systemd in the next agent: the path is its.
	keepPath := a.handedOver || a.handing || a.sdListener
	a.joined.Broadcast()
	ss := make([]*session, 0, len(a.sessions))
	for _, s := range a.sessions {
		ss = append(ss, s)
	}
	for s := range a.admins {
		ss = append(ss, s)
	}
	st := a.store
	a.store = map[storeKey]*stored{}
	a.mu.Unlock()
	for _, s := range ss {
		s.conn.Close()
	}
	for _, e := range st {
		e.discard(a, "agent shutting down")
	}
	if !keepPath {
		os.Remove(a.cfg.Socket)
	}
	a.wg.Wait()
}

// session is one peer on the agent socket.
type session struct {
	id      uint64
	conn    *wire.Conn
	peer    Peer
	name    string
	role    wire.Role
	standby bool
	told    bool // standby because Config.Predecessor said so (WelcomeStandby)
	since   time.Time
	ident   podid.Identity // zero unless Config.Identify identified the peer
	// welcomed is closed once the Welcome went out (or could not): a
	// session is listed before that, so that a client that has its Welcome
	// sees itself listed, and every other message waits for it.
	welcomed chan struct{}

	mu    sync.Mutex
	tx    *txn // the transaction this session takes part in
	state string
}

// info describes the session for administrators and callbacks; the
// caller holds s.mu or owns s.
func (s *session) info() admin.Session {
	return admin.Session{ID: s.id, Name: s.name, PID: s.peer.PID, UID: s.peer.UID, GID: s.peer.GID, State: s.state,
		Standby: s.standby, Since: s.since, PodUID: s.ident.PodUID, ContainerID: s.ident.ContainerID, Runtime: s.ident.Runtime}
}

func (s *session) String() string {
	return fmt.Sprintf("session %d (%s, pid %d)", s.id, s.name, s.peer.PID)
}

func (s *session) send(t wire.Type, txid uint64, body []byte, fds []int) error {
	return s.sendFlags(t, 0, txid, body, fds)
}

// sendFlags is send with header flags.
func (s *session) sendFlags(t wire.Type, flags uint16, txid uint64, body []byte, fds []int) error {
	if t != wire.TypeWelcome && s.welcomed != nil {
		<-s.welcomed // a Begin or Prepare must never overtake the Welcome
	}
	return s.conn.Send(wire.Msg{Header: wire.Header{Type: t, Flags: flags, TxID: txid}, Body: body, FDs: fds})
}

func (s *session) sendError(code wire.Code, reason string) {
	_ = s.send(wire.TypeError, 0, wire.Failure{Code: code, Reason: reason}.Marshal(), nil)
}

func (a *Agent) serveSession(uc *net.UnixConn) {
	// Counted as joining from accept until welcomed (or gone), so that a
	// handover waits for a claim of the store it may start.
	doneJoining := sync.OnceFunc(func() {
		a.mu.Lock()
		a.joining--
		a.mu.Unlock()
	})
	defer doneJoining()
	peer, err := PeerOf(uc)
	c := wire.NewConn(uc)
	defer c.Close()
	if err != nil {
		a.log.Error(err, "refusing a peer whose identity the kernel did not give")
		_ = c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeError}, Body: wire.Failure{Code: wire.CodeRefused, Reason: err.Error()}.Marshal()})
		return
	}
	defer peer.Close()
	log := a.log.WithValues("pid", peer.PID, "uid", peer.UID)
	c.SetReadDeadline(time.Now().Add(a.cfg.HelloTimeout))
	m, err := c.Recv()
	c.SetReadDeadline(time.Time{})
	if err != nil {
		if int(peer.PID) == os.Getpid() && errors.Is(err, wire.ErrClosed) {
			// Healthy's own probe, every few seconds: neither news nor a
			// bad peer.
			log.V(1).Info("health probe connected and closed")
		} else {
			log.Info("peer closed before hello", "reason", err.Error())
			a.m.badPeers.Inc()
		}
		_ = c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeError}, Body: wire.Failure{Code: recvErrorCode(err), Reason: "expected hello: " + err.Error()}.Marshal()})
		return
	}
	m.CloseFDs()
	var h wire.Hello
	if m.Type != wire.TypeHello || h.Unmarshal(m.Body) != nil {
		log.Info("peer did not open with hello", "type", m.Type.String())
		a.m.badPeers.Inc()
		_ = c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeError}, Body: wire.Failure{Code: wire.CodeMalformed, Reason: "the first message must be a valid hello, got " + m.Type.String()}.Marshal()})
		return
	}
	v, err := wire.Negotiate(h.MinVersion, h.MaxVersion)
	if err != nil {
		log.Info("no common protocol version", "peerMin", h.MinVersion, "peerMax", h.MaxVersion)
		_ = c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeError}, Body: wire.Failure{Code: wire.CodeVersion, Reason: err.Error()}.Marshal()})
		return
	}
	c.SetVersion(v)
	s := &session{conn: c, peer: peer, name: h.Name, role: h.Role, standby: h.Flags&wire.HelloStandby != 0, since: time.Now(), state: "active",
		welcomed: make(chan struct{})}
	if s.standby {
		s.state = "standby"
	}
	if a.cfg.Identify != nil && h.Role == wire.RoleApp {
		id, err := a.cfg.Identify(peer.PID, peer.PIDFD)
		if err != nil {
			log.Info("peer joins without a pod identity", "reason", err.Error())
		} else {
			s.ident = id
			log = log.WithValues("podUID", id.PodUID, "containerID", id.ContainerID)
		}
	}
	if h.Role == wire.RoleApp && !s.standby && h.Flags&wire.HelloAsk != 0 && v >= 2 && a.cfg.Predecessor != nil {
		// Decided before the session is listed: a Migration looking for
		// its target finds it in standby from the start.
		wait, why := a.cfg.Predecessor(s.ident)
		log.Info("told the joining process whether to wait for a predecessor", "standby", wait, "why", why)
		s.standby, s.told = wait, wait
		if wait {
			s.state = "standby"
		}
	}
	switch h.Role {
	case wire.RoleAdmin:
		if peer.UID != 0 && peer.UID != uint32(os.Getuid()) {
			log.Info("refused an administrator session", "reason", "not root and not the agent's user")
			_ = c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeError}, Body: wire.Failure{Code: wire.CodeRefused, Reason: fmt.Sprintf("uid %d may not administer this agent (root or uid %d only)", peer.UID, os.Getuid())}.Marshal()})
			return
		}
		if why := a.adminOutsider(peer); why != "" {
			log.Info("refused an administrator session", "reason", why)
			_ = c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeError}, Body: wire.Failure{Code: wire.CodeRefused, Reason: why}.Marshal()})
			return
		}
		// Listed so that shutdown closes it: an idle administrator
		// must not keep a stopping agent alive.
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return
		}
		a.admins[s] = struct{}{}
		a.mu.Unlock()
		defer func() {
			a.mu.Lock()
			delete(a.admins, s)
			a.mu.Unlock()
		}()
		_ = c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeWelcome}, Body: wire.Welcome{Version: uint16(v), PID: uint32(peer.PID)}.Marshal()})
		close(s.welcomed)
		doneJoining()
		a.serveAdmin(s)
		return
	case wire.RoleApp:
	default:
		_ = c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeError}, Body: wire.Failure{Code: wire.CodeMalformed, Reason: fmt.Sprintf("unknown role %d", h.Role)}.Marshal()})
		return
	}

	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.nextID++
	s.id = a.nextID
	// The session as it joined, for the log and OnJoin: read before it is
	// listed, since from then on a transaction may change its state.
	joined := s.info()
	a.sessions[s.id] = s
	a.joined.Broadcast()
	claim := a.claimStored(s)
	a.mu.Unlock()
	a.m.sessions.Inc()
	log = log.WithValues("session", s.id, "name", s.name)
	defer func() {
		a.mu.Lock()
		delete(a.sessions, s.id)
		a.mu.Unlock()
		a.m.sessions.Dec()
	}()

	w := wire.Welcome{Version: uint16(v), SessionID: s.id, PID: uint32(peer.PID)}
	if claim != nil {
		w.Flags |= wire.WelcomePending
	}
	if s.told && claim == nil {
		w.Flags |= wire.WelcomeStandby
	}
	err = s.send(wire.TypeWelcome, 0, w.Marshal(), nil)
	close(s.welcomed)
	if err != nil {
		if claim != nil {
			a.release(claim)
		}
		log.Info("peer left before welcome", "reason", err.Error())
		return
	}
	log.Info("session joined", "standby", joined.Standby, "pendingFromStore", claim != nil)
	if a.cfg.OnJoin != nil {
		a.cfg.OnJoin(joined)
	}
	if claim != nil {
		a.startDelivery(s, claim)
	}
	doneJoining()
	a.readSession(s, log)
}

// recvErrorCode is the code of the Error answering a datagram the decoder
// refused. A header version this agent does not speak is something the
// peer can act on (speak an older version), so it gets CodeVersion, as a
// hello with no common version does, rather than the generic
// CodeMalformed.
func recvErrorCode(err error) wire.Code {
	if errors.Is(err, wire.ErrVersion) {
		return wire.CodeVersion
	}
	return wire.CodeMalformed
}

// readSession reads a session's messages until it ends, handing those of
// a transaction to it.
func (a *Agent) readSession(s *session, log logr.Logger) {
	for {
		m, err := s.conn.RecvWith(a.bodies.get)
		s.mu.Lock()
		tx := s.tx
		s.mu.Unlock()
		if err != nil {
			if tx != nil {
				tx.deliver(event{from: s, err: err})
			}
			if errors.Is(err, wire.ErrClosed) {
				log.Info("session left")
			} else if errors.Is(err, net.ErrClosed) {
				log.Info("session closed by the agent")
			} else {
				log.Info("closing session after a bad message", "reason", err.Error())
				a.m.badPeers.Inc()
				s.sendError(recvErrorCode(err), err.Error())
			}
			return
		}
		if tx != nil && m.TxID == tx.id {
			tx.deliver(event{from: s, msg: m})
			continue
		}
		m.CloseFDs()
		switch {
		case m.Type == wire.TypeAbort || m.Type == wire.TypeCommitted || m.Type == wire.TypeServing:
			// Late word about a transaction that already ended.
		case tx != nil || m.TxID != 0:
			log.Info("refused a message for a transaction this session is not in", "type", m.Type.String(), "txid", m.TxID)
			a.m.badPeers.Inc()
			s.sendError(wire.CodeRefused, fmt.Sprintf("transaction %d is not this session's", m.TxID))
		default:
			log.Info("refused an unexpected message", "type", m.Type.String())
			a.m.badPeers.Inc()
			s.sendError(wire.CodeUnexpected, fmt.Sprintf("%v is not expected outside a transaction", m.Type))
		}
	}
}

// adminOutsider says why peer may not administer this agent, or "" if it
// may: with Identify set, only a process on the node itself or in the
// agent's own container may.
func (a *Agent) adminOutsider(peer Peer) string {
	if a.cfg.Identify == nil {
		return ""
	}
	id, err := a.cfg.Identify(peer.PID, peer.PIDFD)
	switch {
	case errors.Is(err, podid.ErrNotInPod):
		return ""
	case err != nil:
		return fmt.Sprintf("pid %d may not administer this agent: cannot tell whether it runs in a pod: %v", peer.PID, err)
	}
	a.selfOnce.Do(func() {
		fd, err := unix.PidfdOpen(os.Getpid(), 0)
		if err != nil {
			return
		}
		defer unix.Close(fd)
		if self, err := a.cfg.Identify(int32(os.Getpid()), fd); err == nil {
			a.self = &self
		}
	})
	if a.self != nil && id.PodUID == a.self.PodUID && id.ContainerID == a.self.ContainerID {
		return ""
	}
	if a.self != nil && a.cfg.Successor != nil {
		ok, why := a.cfg.Successor(*a.self, id)
		if ok {
			a.log.Info("accepted a successor as administrator", "pid", peer.PID, "why", why)
			return ""
		}
		return fmt.Sprintf("pid %d runs in container %.12s of pod %s: administrators run on the node or in the agent's own container (kubectl exec), or are its successor in a new pod of its DaemonSet, and %s", peer.PID, id.ContainerID, id.PodUID, why)
	}
	return fmt.Sprintf("pid %d runs in container %.12s of pod %s: administrators run on the node or in the agent's own container (kubectl exec)", peer.PID, id.ContainerID, id.PodUID)
}

// serveAdmin answers an administrator's JSON requests.
func (a *Agent) serveAdmin(s *session) {
	for {
		m, err := s.conn.Recv()
		if err != nil {
			return
		}
		m.CloseFDs()
		if m.Type != wire.TypeRequest {
			s.sendError(wire.CodeUnexpected, fmt.Sprintf("administrators send requests, not %v", m.Type))
			continue
		}
		var req admin.Request
		var resp admin.Response
		// The answer to a migration or a store is part of it: a handover
		// waits until it went out.
		counted := false
		if err := json.Unmarshal(m.Body, &req); err != nil {
			resp.Error = fmt.Sprintf("decode request: %v", err)
		} else if req.Op == admin.OpHandover {
			// A successor: the session carries the handover, and ends
			// with it.
			a.handOver(s, req)
			return
		} else {
			if counted = req.Op == admin.OpMigrate || req.Op == admin.OpStore; counted {
				a.mu.Lock()
				a.answering++
				a.mu.Unlock()
			}
			resp = a.handle(s, req)
		}
		body, _ := json.Marshal(resp)
		if len(body) > wire.MaxBody {
			body, _ = json.Marshal(admin.Response{Error: fmt.Sprintf("answer of %d bytes exceeds the protocol's %d", len(body), wire.MaxBody)})
		}
		err = s.send(wire.TypeResponse, 0, body, nil)
		if counted {
			a.mu.Lock()
			a.answering--
			a.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

func (a *Agent) handle(s *session, req admin.Request) admin.Response {
	switch req.Op {
	case admin.OpSessions:
		return a.listSessions()
	case admin.OpWait:
		timeout := time.Duration(req.TimeoutMS) * time.Millisecond
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		ss, err := a.WaitSession(req.PID, timeout)
		if err != nil {
			return admin.Response{Error: err.Error()}
		}
		return admin.Response{Sessions: []admin.Session{ss}}
	case admin.OpMigrate, admin.OpStore:
		what, err := parseWhat(req.What)
		if err != nil {
			return admin.Response{Error: err.Error()}
		}
		timeout := time.Duration(req.TimeoutMS) * time.Millisecond
		if timeout <= 0 {
			timeout = a.cfg.MigrateTimeout
		}
		progress := func(phase, msg string) {
			b, _ := json.Marshal(admin.Progress{Phase: phase, Message: msg})
			_ = s.send(wire.TypeProgress, 0, b, nil)
		}
		var res admin.Result
		if req.Op == admin.OpStore {
			hold := time.Duration(req.HoldMS) * time.Millisecond
			res, err = a.StoreFrom(req.From, what, timeout, hold, progress)
		} else {
			res, err = a.Migrate(req.From, req.To, what, timeout, progress)
		}
		if err != nil {
			return admin.Response{Error: err.Error()}
		}
		return admin.Response{Result: &res}
	}
	return admin.Response{Error: fmt.Sprintf("unknown operation %q (known: %s, %s, %s, %s, %s)", req.Op, admin.OpSessions, admin.OpWait, admin.OpMigrate, admin.OpStore, admin.OpHandover)}
}

func parseWhat(w []string) (uint32, error) {
	if len(w) == 0 {
		return wire.MoveAll, nil
	}
	var what uint32
	for _, x := range w {
		switch x {
		case "listeners":
			what |= wire.MoveListeners
		case "connections":
			what |= wire.MoveConns
		case "packets":
			what |= wire.MovePackets
		default:
			return 0, fmt.Errorf("unknown kind to move %q (known: listeners, connections, packets)", x)
		}
	}
	return what, nil
}

func (a *Agent) listSessions() admin.Response {
	a.mu.Lock()
	defer a.mu.Unlock()
	var r admin.Response
	for _, s := range a.sessions {
		s.mu.Lock()
		r.Sessions = append(r.Sessions, s.info())
		s.mu.Unlock()
	}
	sort.Slice(r.Sessions, func(i, j int) bool { return r.Sessions[i].ID < r.Sessions[j].ID })
	for k, e := range a.store {
		r.Stored = append(r.Stored, admin.Stored{Name: k.name, UID: k.uid, Listeners: int(e.sum.Listeners), Connections: int(e.sum.Conns), Packets: int(e.sum.Packets), Expires: e.expires})
	}
	return r
}

// WaitSession waits until the process pid has an application session.
func (a *Agent) WaitSession(pid int32, timeout time.Duration) (admin.Session, error) {
	expired := false
	timer := time.AfterFunc(timeout, func() {
		a.mu.Lock()
		expired = true
		a.joined.Broadcast()
		a.mu.Unlock()
	})
	defer timer.Stop()
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		for _, s := range a.sessions {
			if s.peer.PID == pid {
				s.mu.Lock()
				defer s.mu.Unlock()
				return s.info(), nil
			}
		}
		if expired || a.closed {
			return admin.Session{}, fmt.Errorf("process %d did not join within %v", pid, timeout)
		}
		a.joined.Wait()
	}
}

// Sessions lists the current application sessions.
func (a *Agent) Sessions() []admin.Session { return a.listSessions().Sessions }
