package nodeagent_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/nodeagent/podid"
)

// startOpenAgent runs an agent whose socket children of any uid may reach.
func startOpenAgent(t *testing.T, cfg nodeagent.Config) *agentT {
	t.Helper()
	cfg.Socket = openSocketPath(t)
	cfg.SocketMode, cfg.DirMode = 0o666, 0o755
	return startAgentT(t, cfg)
}

// appChild is a hand-written application session in a child process.
type appChild struct {
	*child
	session uint64
	flags   uint16
}

// startAppChild starts an "app" child that joins as name and returns once
// it printed its Welcome.
func startAppChild(t *testing.T, at *agentT, name string, standby bool, cred *syscall.Credential) *appChild {
	t.Helper()
	env := []string{"HANDOFF_SOCKET=" + at.socket, "HANDOFF_NAME=" + name}
	if standby {
		env = append(env, "STANDBY=1")
	}
	c := startChild(t, "app", cred, env...)
	l := c.line("WELCOME", "FAIL")
	id, _ := strconv.ParseUint(field(l, "session"), 10, 64)
	pid, _ := strconv.Atoi(field(l, "pid"))
	self, _ := strconv.Atoi(field(l, "self"))
	flags, _ := strconv.ParseUint(field(l, "flags"), 10, 16)
	if id == 0 || pid != c.pid || self != c.pid {
		t.Fatalf("child %d: %q: want a session and the child's own pid in the welcome", c.pid, l)
	}
	return &appChild{child: c, session: id, flags: uint16(flags)}
}

// leave closes the child's stdin, checks that it received no message
// from the agent, and waits until it was reaped.
func (a *appChild) leave(t *testing.T) {
	t.Helper()
	a.stdin.Close()
	if l := a.line("BYE", "MSG"); l != "BYE" {
		t.Fatalf("child %d: %q", a.pid, l)
	}
	a.kill()
}

// waitJoin waits for the agent's OnJoin report of session id.
func waitJoin(t *testing.T, at *agentT, id uint64) admin.Session {
	t.Helper()
	deadline := time.After(bound)
	for {
		select {
		case s := <-at.joins:
			if s.ID == id {
				return s
			}
		case <-deadline:
			t.Fatalf("no join reported for session %d", id)
		}
	}
}

func findSession(t *testing.T, ac *admin.Client, id uint64) admin.Session {
	t.Helper()
	r, err := ac.Sessions()
	if err != nil {
		t.Fatalf("sessions: %v", err)
	}
	for _, s := range r.Sessions {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("session %d not listed: %+v", id, r.Sessions)
	return admin.Session{}
}

// TestPeerIdentityFromKernel: a child process joins with the same name as
// a session of the test process. The agent lists it with the pid, uid and
// gid the kernel reports for the child (run as nobody when the test runs
// as root, so that the uid differs from the test process's too), and the
// name as claimed, which identifies nothing.
func TestPeerIdentityFromKernel(t *testing.T) {
	at := startOpenAgent(t, nodeagent.Config{})
	base := fdCount(t)
	var cred *syscall.Credential
	wantUID, wantGID := uint32(os.Getuid()), uint32(os.Getgid())
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: nobody, Gid: nobody}
		wantUID, wantGID = nobody, nobody
	} else {
		t.Log("not root: the child runs with the test's own uid, so only its pid is checked against the test process's")
	}
	own, ownID := join(t, at, "svc", false)
	ch := startAppChild(t, at, "svc", false, cred)
	if ch.pid == os.Getpid() {
		t.Fatal("the child has the test's pid")
	}
	ac := adminDial(t, at)
	for _, s := range []admin.Session{findSession(t, ac, ch.session), waitJoin(t, at, ch.session)} {
		if s.PID != int32(ch.pid) || s.UID != wantUID || s.GID != wantGID || s.Name != "svc" {
			t.Fatalf("child session %+v: want pid %d uid %d gid %d as the kernel reports them, name %q", s, ch.pid, wantUID, wantGID, "svc")
		}
	}
	if s := findSession(t, ac, ownID); s.PID != int32(os.Getpid()) || s.UID != uint32(os.Getuid()) {
		t.Fatalf("test session %+v: want pid %d uid %d", s, os.Getpid(), os.Getuid())
	}
	ch.leave(t)
	waitGone(t, ac, ch.session)
	own.Close()
	waitGone(t, ac, ownID)
	ac.Close()
	assertServes(t, at, base)
}

// TestAdminRefusedForOtherUID: a process of a uid that is neither root
// nor the agent's may join as an application but not administer the
// agent; a child of the agent's own uid may.
func TestAdminRefusedForOtherUID(t *testing.T) {
	needRoot(t)
	at := startOpenAgent(t, nodeagent.Config{})
	base := fdCount(t)
	cred := &syscall.Credential{Uid: nobody, Gid: nobody}

	// The socket is reachable for nobody: the refusal below is about the
	// role, not about file permissions.
	app := startAppChild(t, at, "nobodys-app", false, cred)

	adm := startChild(t, "admin", cred, "HANDOFF_SOCKET="+at.socket)
	l := adm.line("REFUSED", "ADMIN", "FAIL")
	if field(l, "code") != "Refused" || !strings.Contains(l, "uid 65534") {
		t.Fatalf("nobody's administrator session: %q, want refused naming uid 65534", l)
	}
	adm.kill()
	at.waitLog(t, "refused an administrator session", "uid", nobody)

	root := startChild(t, "admin", nil, "HANDOFF_SOCKET="+at.socket)
	if l := root.line("ADMIN", "REFUSED", "FAIL"); field(l, "sessions") != "1" {
		t.Fatalf("root's administrator session: %q, want nobody's application listed", l)
	}
	root.kill()

	ac := adminDial(t, at)
	app.leave(t)
	waitGone(t, ac, app.session)
	ac.Close()
	assertServes(t, at, base)
}

// TestAdminOnlyFromNodeOrAgentContainer: with Identify set (Kubernetes),
// an administrator must run on the node or in the agent's own container.
// A root process in an application's pod reaches the socket too; it must
// not be able to move other pods' connections. The test process is both
// agent and administrator, so the fake Identify answers by call order:
// the peer is identified first, then (once) the agent itself.
func TestAdminOnlyFromNodeOrAgentContainer(t *testing.T) {
	agentSelf := podid.Identity{PodUID: "agent-pod", ContainerID: "agent-container"}
	type answer struct {
		id  podid.Identity
		err error
	}
	answers := make(chan answer, 8)
	at := startAgentT(t, nodeagent.Config{Identify: func(pid int32, pidfd int) (podid.Identity, error) {
		select {
		case a := <-answers:
			return a.id, a.err
		default:
			t.Errorf("Identify(%d) called more often than the test expected", pid)
			return podid.Identity{}, podid.ErrNotInPod
		}
	}})
	for _, c := range []struct {
		name    string
		answers []answer
		refused string // "" when the session must be accepted
	}{
		{"in an application's pod", []answer{{id: podid.Identity{PodUID: "app-pod", ContainerID: "app-container"}}, {id: agentSelf}}, "runs in container app-containe of pod app-pod"},
		{"on the node", []answer{{err: fmt.Errorf("pid 1: %w", podid.ErrNotInPod)}}, ""},
		{"in the agent's container", []answer{{id: agentSelf}}, ""},
		{"unidentifiable", []answer{{err: fmt.Errorf("pid 1: %w", podid.ErrAmbiguous)}}, "cannot tell whether it runs in a pod"},
	} {
		for _, a := range c.answers {
			answers <- a
		}
		ac, err := admin.Dial(at.socket)
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("administrator %s: %v; want it accepted", c.name, err)
		case c.refused != "" && err == nil:
			ac.Close()
			t.Errorf("administrator %s was accepted; want it refused", c.name)
		case c.refused != "" && !strings.Contains(err.Error(), c.refused):
			t.Errorf("administrator %s refused with %q; want a reason that says %q", c.name, err, c.refused)
		case err == nil:
			if _, err := ac.Do(admin.Request{Op: admin.OpSessions}, nil); err != nil {
				t.Errorf("administrator %s: list sessions: %v", c.name, err)
			}
			ac.Close()
		}
		if len(answers) != 0 {
			t.Errorf("administrator %s: Identify was called %d times fewer than expected", c.name, len(answers))
		}
	}
}
