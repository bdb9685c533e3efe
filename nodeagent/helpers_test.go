package nodeagent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/wire"
)

// bound is how long any single wait in these tests may take before it
// counts as a hang. Waits end on conditions, long before this.
const bound = 10 * time.Second

// agentT is an agent running in the test process on a temporary socket.
type agentT struct {
	*nodeagent.Agent
	socket  string
	results chan admin.Result
	joins   chan admin.Session
	done    chan error
	cancel  context.CancelFunc
	logs    *logBook
}

// logBook keeps the agent's log lines, decoded, so tests can check that
// something was logged and with which values.
type logBook struct {
	mu    sync.Mutex
	lines []map[string]any
}

// find returns the first line whose message is msg and whose values
// contain every key/value of kv (string values as substrings).
func (b *logBook) find(msg string, kv ...any) map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
next:
	for _, l := range b.lines {
		if l["msg"] != msg {
			continue
		}
		for i := 0; i+1 < len(kv); i += 2 {
			got, ok := l[kv[i].(string)]
			if !ok {
				continue next
			}
			if want, ok := kv[i+1].(string); ok {
				if s, _ := got.(string); !strings.Contains(s, want) {
					continue next
				}
			} else if fmt.Sprint(got) != fmt.Sprint(kv[i+1]) {
				continue next
			}
		}
		return l
	}
	return nil
}

// waitLog waits until the agent has logged msg with kv (see find).
func (at *agentT) waitLog(t *testing.T, msg string, kv ...any) map[string]any {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		if l := at.logs.find(msg, kv...); l != nil {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not log %q with %v", msg, kv)
		}
		time.Sleep(time.Millisecond) // polling interval of a bounded condition wait
	}
}

func startAgentT(t *testing.T, cfg nodeagent.Config) *agentT {
	t.Helper()
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(t.TempDir(), "run", "agent.sock")
	}
	at := &agentT{socket: cfg.Socket, results: make(chan admin.Result, 64), joins: make(chan admin.Session, 64), done: make(chan error, 1), logs: &logBook{}}
	cfg.Log = funcr.NewJSON(func(obj string) {
		t.Log(obj)
		var l map[string]any
		if err := json.Unmarshal([]byte(obj), &l); err != nil {
			t.Errorf("agent log line %q is not JSON: %v", obj, err)
			return
		}
		at.logs.mu.Lock()
		at.logs.lines = append(at.logs.lines, l)
		at.logs.mu.Unlock()
	}, funcr.Options{})
	cfg.OnResult = func(r admin.Result) { at.results <- r }
	cfg.OnJoin = func(s admin.Session) { at.joins <- s }
	at.Agent = nodeagent.New(cfg)
	if err := at.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	at.cancel = cancel
	go func() { at.done <- at.Serve(ctx) }()
	t.Cleanup(at.stop)
	return at
}

// stop ends Serve and waits for it; safe to call twice.
func (at *agentT) stop() {
	if at.cancel == nil {
		return
	}
	at.cancel()
	at.cancel = nil
	<-at.done
}

// fdCount counts the test process's descriptors, which include the
// agent's since it runs in this process.
func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count descriptors: %v", err)
	}
	return len(ents)
}

// fdList describes the process's descriptors, for failure messages.
func fdList() string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err.Error()
	}
	var l []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the directory's own descriptor, closed by now
		}
		l = append(l, e.Name()+"→"+target)
	}
	return strings.Join(l, " ")
}

// waitFDs waits until the process has exactly want descriptors: the agent
// closes a session's socket and pidfd on its own goroutine, so the count
// settles shortly after the peer sees the close. Bounded, never slept on.
func waitFDs(t *testing.T, want int, what string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		got := fdCount(t)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d descriptors open, want %d (%+d): %s", what, got, want, got-want, fdList())
		}
		time.Sleep(time.Millisecond) // polling interval of a bounded condition wait
	}
}

// dialRaw connects to the agent socket without saying anything.
func dialRaw(t *testing.T, at *agentT) *wire.Conn {
	t.Helper()
	c, err := wire.Dial(at.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c *wire.Conn, typ wire.Type, txid uint64, body []byte, fds ...int) {
	t.Helper()
	if err := c.Send(wire.Msg{Header: wire.Header{Type: typ, TxID: txid}, Body: body, FDs: fds}); err != nil {
		t.Fatalf("send %v: %v", typ, err)
	}
}

// sendRaw writes a datagram exactly as given.
func sendRaw(t *testing.T, c *wire.Conn, b, oob []byte) {
	t.Helper()
	if _, _, err := c.Unix().WriteMsgUnix(b, oob, nil); err != nil {
		t.Fatalf("sendmsg: %v", err)
	}
}

func recv(t *testing.T, c *wire.Conn) wire.Msg {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(bound))
	m, err := c.Recv()
	c.SetReadDeadline(time.Time{})
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	return m
}

// recvType receives one message and checks its type.
func recvType(t *testing.T, c *wire.Conn, typ wire.Type) wire.Msg {
	t.Helper()
	m := recv(t, c)
	if m.Type != typ {
		m.CloseFDs()
		t.Fatalf("received %v (txid %d, body %q), want %v", m.Type, m.TxID, m.Body, typ)
	}
	return m
}

// recvFailure receives an Error or Abort and checks its code.
func recvFailure(t *testing.T, c *wire.Conn, typ wire.Type, code wire.Code) wire.Failure {
	t.Helper()
	m := recvType(t, c, typ)
	m.CloseFDs()
	var f wire.Failure
	if err := f.Unmarshal(m.Body); err != nil {
		t.Fatalf("%v body: %v", typ, err)
	}
	if f.Code != code {
		t.Fatalf("%v with code %s (%q), want %s", typ, f.Code, f.Reason, code)
	}
	return f
}

// expectClosed reads until the agent closes the connection, failing on
// anything but the close. A reset (the agent closed with our datagrams
// unread) counts as closed too.
func expectClosed(t *testing.T, c *wire.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(bound))
	defer c.SetReadDeadline(time.Time{})
	m, err := c.Recv()
	if err == nil {
		m.CloseFDs()
		t.Fatalf("received %v, want the agent to close the connection", m.Type)
	}
	if !errors.Is(err, wire.ErrClosed) {
		t.Fatalf("waiting for the agent to close: %v", err)
	}
}

// hello opens an application session and returns its Welcome.
func hello(t *testing.T, c *wire.Conn, name string, standby bool) wire.Welcome {
	t.Helper()
	h := wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, Role: wire.RoleApp, Name: name}
	if standby {
		h.Flags = wire.HelloStandby
	}
	send(t, c, wire.TypeHello, 0, h.Marshal())
	m := recvType(t, c, wire.TypeWelcome)
	var w wire.Welcome
	if err := w.Unmarshal(m.Body); err != nil {
		t.Fatal(err)
	}
	if w.Version != uint16(wire.MaxVersion) || w.SessionID == 0 || int(w.PID) != os.Getpid() {
		t.Fatalf("welcome %+v: want version %d, a session id and pid %d", w, wire.MaxVersion, os.Getpid())
	}
	c.SetVersion(uint8(w.Version))
	return w
}

// join opens an application session on a new connection.
func join(t *testing.T, at *agentT, name string, standby bool) (*wire.Conn, uint64) {
	t.Helper()
	c := dialRaw(t, at)
	w := hello(t, c, name, standby)
	return c, w.SessionID
}

func adminDial(t *testing.T, at *agentT) *admin.Client {
	t.Helper()
	ac, err := admin.Dial(at.socket)
	if err != nil {
		t.Fatalf("admin dial: %v", err)
	}
	t.Cleanup(func() { ac.Close() })
	return ac
}

func sessionIDs(t *testing.T, ac *admin.Client) []uint64 {
	t.Helper()
	r, err := ac.Sessions()
	if err != nil {
		t.Fatalf("sessions: %v", err)
	}
	var ids []uint64
	for _, s := range r.Sessions {
		ids = append(ids, s.ID)
	}
	return ids
}

// waitGone waits until the agent no longer lists session id.
func waitGone(t *testing.T, ac *admin.Client, id uint64) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for slices.Contains(sessionIDs(t, ac), id) {
		if time.Now().After(deadline) {
			t.Fatalf("session %d still listed", id)
		}
		time.Sleep(time.Millisecond) // polling interval of a bounded condition wait
	}
}

// assertServes checks that the agent still works after a bad peer: a
// well-behaved application joins, an administrator lists it, both leave,
// and the descriptor count returns to base.
func assertServes(t *testing.T, at *agentT, base int) {
	t.Helper()
	c, id := join(t, at, "healthy", false)
	ac := adminDial(t, at)
	if ids := sessionIDs(t, ac); !slices.Contains(ids, id) {
		t.Fatalf("a healthy session %d is not listed: %v", id, ids)
	}
	c.Close()
	waitGone(t, ac, id)
	ac.Close()
	waitFDs(t, base, "after a healthy session and an administrator left")
}

// listenerFD opens a TCP listener on loopback and returns it with its
// descriptor (still owned by the listener).
func listenerFD(t *testing.T) (net.Listener, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	raw.Control(func(f uintptr) { fd = int(f) })
	return ln, fd
}
