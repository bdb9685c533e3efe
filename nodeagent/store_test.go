package nodeagent_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/test/support/testapp"
	"github.com/handoff-dev/handoff/wire"
)

// appProc is test/support/testapp serving TCP in a child process, joined to
// the agent through the SDK.
type appProc struct {
	*child
	tcp      string
	imported int
	session  uint64
}

// startTestapp starts a testapp child named name and returns once it
// serves (fresh, or with what the agent handed it).
func startTestapp(t *testing.T, at *agentT, name string, cred *syscall.Credential) *appProc {
	t.Helper()
	c := startChild(t, "testapp", cred, "HANDOFF_SOCKET="+at.socket, "HANDOFF_NAME="+name)
	l := c.line("READY", "EXIT")
	a := &appProc{child: c, tcp: field(l, "tcp")}
	a.imported, _ = strconv.Atoi(field(l, "imported"))
	if pid, _ := strconv.Atoi(field(l, "pid")); pid != c.pid || a.tcp == "" {
		t.Fatalf("testapp %d: %q", c.pid, l)
	}
	ac := adminDial(t, at)
	defer ac.Close()
	r, err := ac.WaitSession(int32(c.pid), bound)
	if err != nil {
		t.Fatalf("testapp %d has no session: %v", c.pid, err)
	}
	a.session = r.ID
	return a
}

// client is a TCP connection to a testapp.
type client struct {
	c  net.Conn
	id uint64
}

func dialClient(t *testing.T, addr string, id uint64) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, bound)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], id)
	if _, err := c.Write(b[:]); err != nil {
		t.Fatal(err)
	}
	return &client{c: c, id: id}
}

// request writes one request byte; whoever owns the connection then
// answers it.
func (c *client) request(t *testing.T) {
	t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(bound))
	if _, err := c.c.Write([]byte{'p'}); err != nil {
		t.Fatalf("conn %d: write: %v", c.id, err)
	}
}

// reply reads one answer and checks it is for this connection, with
// intact state, from process pid, the count-th request.
func (c *client) reply(t *testing.T, pid int, count uint64) {
	t.Helper()
	c.c.SetReadDeadline(time.Now().Add(bound))
	b := make([]byte, testapp.ReplyLen)
	if _, err := io.ReadFull(c.c, b); err != nil {
		t.Fatalf("conn %d: read reply: %v", c.id, err)
	}
	r := testapp.DecodeReply(b)
	if r.ID != c.id || int(r.PID) != pid || r.Count != count || !r.StateOK {
		t.Fatalf("conn %d: reply %+v, want id %d from pid %d, request %d, state intact", c.id, r, c.id, pid, count)
	}
}

// storeOK stores session from's sockets and checks that one listener and
// conns connections went into the store.
func storeOK(t *testing.T, at *agentT, from uint64, hold time.Duration, conns int) {
	t.Helper()
	res, err := at.StoreFrom(from, wire.MoveAll, bound, hold, nil)
	if err != nil {
		t.Fatalf("store: %v", err)
	}
	if res.Phase != nodeagent.PhaseCompleted || res.Listeners != 1 || res.Connections != conns || res.PauseNS <= 0 {
		t.Fatalf("store result %+v: want Completed with 1 listener and %d connections, and the source's pause", res, conns)
	}
}

func storedEntries(t *testing.T, at *agentT) []admin.Stored {
	t.Helper()
	ac := adminDial(t, at)
	defer ac.Close()
	r, err := ac.Sessions()
	if err != nil {
		t.Fatalf("sessions: %v", err)
	}
	return r.Stored
}

// expectStored checks that exactly one entry is stored, for name and the
// test's uid, with one listener and conns connections.
func expectStored(t *testing.T, at *agentT, name string, conns int) {
	t.Helper()
	st := storedEntries(t, at)
	uid := uint32(os.Getuid())
	if len(st) != 1 || st[0].Name != name || st[0].UID != uid || st[0].Listeners != 1 || st[0].Connections != conns {
		t.Fatalf("stored %+v: want one entry for %q uid %d with 1 listener and %d connections", st, name, uid, conns)
	}
}

// TestStoreClaimedBySameNameAndUID: a process stores its listener and a
// live connection in the agent and exits; a client writes while nobody
// serves, and a new connection waits in the backlog. The next process
// with the same name and uid claims both: the bytes written before and
// after it arrived are answered by it, with the connection's state
// intact, and the agent keeps no copy.
func TestStoreClaimedBySameNameAndUID(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	base := fdCount(t)
	src := startTestapp(t, at, "svc", nil)
	c1 := dialClient(t, src.tcp, 7)
	c1.request(t)
	c1.reply(t, src.pid, 1)

	storeOK(t, at, src.session, bound, 1)
	src.line("EXIT ok")
	src.kill()
	expectStored(t, at, "svc", 1)

	// Nobody serves now: a request and a new connection wait in the
	// kernel, in the sockets the agent holds.
	c1.request(t)
	c2 := dialClient(t, src.tcp, 8)
	c2.request(t)

	claim := startTestapp(t, at, "svc", nil)
	if claim.imported != 1 || claim.tcp != src.tcp {
		t.Fatalf("claimant imported %d connections on %s, want 1 on the stored listener %s", claim.imported, claim.tcp, src.tcp)
	}
	c1.reply(t, claim.pid, 2)
	c1.request(t)
	c1.reply(t, claim.pid, 3)
	c2.reply(t, claim.pid, 1)

	deadline := time.After(bound)
	for res := (admin.Result{}); res.To != claim.session; {
		select {
		case res = <-at.results:
		case <-deadline:
			t.Fatalf("no result reported for the delivery to session %d", claim.session)
		}
		if res.To == claim.session && (res.Phase != nodeagent.PhaseCompleted || res.Listeners != 1 || res.Connections != 1) {
			t.Fatalf("delivery result %+v: want Completed with 1 listener and 1 connection", res)
		}
	}
	if st := storedEntries(t, at); len(st) != 0 {
		t.Fatalf("still stored after the claim: %+v", st)
	}
	c1.c.Close()
	c2.c.Close()
	claim.kill()
	waitFDs(t, base, "after the claimant and the clients left")
}

// TestStoreNotForOtherUID: sessions of another uid with the same name,
// one waiting in standby when the descriptors are stored and one joining
// afterwards, get nothing; the process with the right uid still does.
func TestStoreNotForOtherUID(t *testing.T) {
	needRoot(t)
	at := startOpenAgent(t, nodeagent.Config{})
	base := fdCount(t)
	cred := &syscall.Credential{Uid: nobody, Gid: nobody}
	waiting := startAppChild(t, at, "svc", true, cred)

	src := startTestapp(t, at, "svc", nil)
	c1 := dialClient(t, src.tcp, 7)
	c1.request(t)
	c1.reply(t, src.pid, 1)
	storeOK(t, at, src.session, bound, 1)
	src.line("EXIT ok")
	src.kill()

	late := startAppChild(t, at, "svc", false, cred)
	if late.flags&wire.WelcomePending != 0 {
		t.Fatalf("a session of uid %d was told descriptors are pending for it", nobody)
	}
	expectStored(t, at, "svc", 1)
	ac := adminDial(t, at)
	if s := findSession(t, ac, waiting.session); s.State != "standby" {
		t.Fatalf("nobody's standby session %+v: want it still waiting", s)
	}

	c1.request(t)
	claim := startTestapp(t, at, "svc", nil)
	if claim.imported != 1 {
		t.Fatalf("the process with the right uid imported %d connections, want 1", claim.imported)
	}
	c1.reply(t, claim.pid, 2)

	waiting.leave(t)
	late.leave(t)
	waitGone(t, ac, waiting.session)
	waitGone(t, ac, late.session)
	ac.Close()
	c1.c.Close()
	claim.kill()
	waitFDs(t, base, "after every process and client left")
}

// gauge reads a gauge of the agent's metrics.
func gauge(t *testing.T, m *nodeagent.Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

// TestStoreHoldExpires: stored descriptors nobody claims are closed after
// the hold, with a log line saying what was lost and why; the client's
// connection ends, the port no longer listens, a process that comes later
// starts fresh, and the descriptor count is back at its baseline.
func TestStoreHoldExpires(t *testing.T) {
	m := nodeagent.NewMetrics(nil)
	at := startAgentT(t, nodeagent.Config{Metrics: m})
	base := fdCount(t)
	src := startTestapp(t, at, "svc", nil)
	c1 := dialClient(t, src.tcp, 7)
	c1.request(t)
	c1.reply(t, src.pid, 1)

	// Long enough that the checks right after the store see it held.
	const hold = 2 * time.Second
	start := time.Now()
	storeOK(t, at, src.session, hold, 1)
	expectStored(t, at, "svc", 1)
	if n := gauge(t, m, "handoff_stored_fds"); n != 2 {
		t.Fatalf("handoff_stored_fds %v, want 2", n)
	}
	src.line("EXIT ok")
	src.kill()

	at.waitLog(t, "closing stored descriptors", "name", "svc", "uid", os.Getuid(), "listeners", 1, "connections", 1, "reason", "claimed them within")
	if took := time.Since(start); took < hold {
		t.Fatalf("stored descriptors closed after %v, before the hold of %v", took, hold)
	}
	c1.c.SetReadDeadline(time.Now().Add(bound))
	if n, err := c1.c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %d bytes, %v: want the connection closed", n, err)
	}
	if c, err := net.DialTimeout("tcp", src.tcp, bound); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after the hold", src.tcp)
	}
	if n := gauge(t, m, "handoff_stored_fds"); n != 0 {
		t.Fatalf("handoff_stored_fds %v after the hold, want 0", n)
	}
	if st := storedEntries(t, at); len(st) != 0 {
		t.Fatalf("still stored after the hold: %+v", st)
	}
	late := startTestapp(t, at, "svc", nil)
	if late.imported != 0 {
		t.Fatalf("a process after the hold imported %d connections", late.imported)
	}
	late.kill()
	c1.c.Close()
	waitFDs(t, base, "after the hold expired and every process left")
}

// TestStoreSourceDiesBeforeReady: the source exported everything and
// dies before the store says Ready, as a container can be killed by
// kubelet right after the agent patched its image. Its copies died with
// it, so the agent's are the only ones: it keeps them, and the next
// process with the same name claims the connection, state intact.
func TestStoreSourceDiesBeforeReady(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{})
	src := startTestapp(t, at, "svc", nil)
	c1 := dialClient(t, src.tcp, 7)
	c1.request(t)
	c1.reply(t, src.pid, 1)

	res, err := at.StoreFromWith(src.session, wire.MoveAll, bound, bound, nil, nodeagent.StoreOptions{
		BeforeReady: func() error {
			src.kill() // SIGKILL, and reaped: the pair's other end is closed
			return nil
		},
	})
	if err != nil {
		t.Fatalf("store: %v", err)
	}
	if res.Phase != nodeagent.PhaseCompleted || res.Listeners != 1 || res.Connections != 1 {
		t.Fatalf("store result %+v: want Completed with 1 listener and 1 connection, kept although the source died", res)
	}
	expectStored(t, at, "svc", 1)
	c1.request(t)
	claim := startTestapp(t, at, "svc", nil)
	if claim.imported != 1 || claim.tcp != src.tcp {
		t.Fatalf("claimant imported %d connections on %s, want 1 on the stored listener %s", claim.imported, claim.tcp, src.tcp)
	}
	c1.reply(t, claim.pid, 2)
	claim.kill()
}
