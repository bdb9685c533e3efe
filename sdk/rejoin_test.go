package handoff_test

import (
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
)

// TestAgentRestarts kills the agent with SIGKILL and starts a new one,
// 20 times, while streamers serve verifying clients. After each restart
// every streamer joins the new agent by itself, and a migration of one of
// them succeeds, without restarting any streamer; no client loses a byte.
// It prints how long the streamers took to join the new agent.
func TestAgentRestarts(t *testing.T) {
	const (
		restarts  = 20
		streamers = 3
		streams   = 40
	)
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	agent := startChild(t, "agent", "HANDOFF_SOCKET="+sock)
	agent.line("READY", childTimeout)
	srcs := make([]*streamer, streamers)
	loads := make([]*load, streamers)
	for i := range srcs {
		srcs[i] = startStreamer(t, sock, false)
		loads[i] = startLoad(t, srcs[i].addr, streams)
	}
	var rejoined []time.Duration
	for round := 1; round <= restarts; round++ {
		agent = restartAgent(t, agent, sock)
		up := time.Now()
		ac, err := admin.Dial(sock)
		if err != nil {
			t.Fatal(err)
		}
		var last time.Duration
		sessions := make([]admin.Session, streamers)
		for i, s := range srcs {
			if sessions[i], err = ac.WaitSession(int32(s.pid), childTimeout); err != nil {
				t.Fatalf("round %d: streamer %d did not join the new agent: %v", round, s.pid, err)
			}
			last = time.Since(up)
		}
		rejoined = append(rejoined, last)

		// One of them moves to a new process through the new agent.
		i := round % streamers
		dst := startStreamer(t, sock, true)
		ds, err := ac.WaitSession(int32(dst.pid), childTimeout)
		if err != nil {
			t.Fatal(err)
		}
		res, err := ac.Migrate(admin.Request{From: sessions[i].ID, To: ds.ID, TimeoutMS: uint32(faultMigrateTimeout / time.Millisecond)}, nil)
		if err != nil {
			t.Fatalf("round %d: migrate: %v", round, err)
		}
		if res.Phase != nodeagent.PhaseCompleted {
			t.Fatalf("round %d: migration %s: %s: %s", round, res.Phase, res.Reason, res.Message)
		}
		if l, code := srcs[i].waitExit(t); code != 0 || l != "EXIT ok" {
			t.Fatalf("round %d: source ended with %q, status %d", round, l, code)
		}
		dst.waitReady(t)
		srcs[i] = dst
		ac.Close()
		for _, l := range loads {
			l.advance(t)
		}
	}
	for _, l := range loads {
		if st := l.long.Stop(); len(st.Failures()) > 0 || st.Alive != st.Streams {
			t.Fatalf("streams: %s\n%s", st, strings.Join(st.Failures(), "\n"))
		}
	}
	slices.Sort(rejoined)
	t.Logf("%d agent restarts: every streamer joined the new agent within %v (median), %v (max) of it listening",
		restarts, rejoined[len(rejoined)/2].Round(time.Millisecond), rejoined[len(rejoined)-1].Round(time.Millisecond))
}

// TestStandbyRejoins: a process waiting in standby for a handoff loses
// the agent (SIGKILL) before anything began; it joins the new agent in
// standby by itself, and a migration to it then succeeds, without
// restarting either streamer; no client loses a byte.
func TestStandbyRejoins(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	agent := startChild(t, "agent", "HANDOFF_SOCKET="+sock)
	agent.line("READY", childTimeout)
	src := startStreamer(t, sock, false)
	l := startLoad(t, src.addr, 20)
	dst := startStreamer(t, sock, true)
	ac, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ac.WaitSession(int32(dst.pid), childTimeout); err != nil {
		t.Fatal(err)
	}
	ac.Close()
	agent = restartAgent(t, agent, sock)
	up := time.Now()
	ac, err = admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	ss, err := ac.WaitSession(int32(src.pid), childTimeout)
	if err != nil {
		t.Fatalf("the source did not join the new agent: %v", err)
	}
	ds, err := ac.WaitSession(int32(dst.pid), childTimeout)
	if err != nil {
		t.Fatalf("the standby process did not join the new agent: %v", err)
	}
	if !ds.Standby {
		t.Fatalf("the standby process joined the new agent as %+v, want standby", ds)
	}
	t.Logf("both joined the new agent within %v of it listening", time.Since(up).Round(time.Millisecond))
	res, err := ac.Migrate(admin.Request{From: ss.ID, To: ds.ID, TimeoutMS: uint32(faultMigrateTimeout / time.Millisecond)}, nil)
	if err != nil || res.Phase != nodeagent.PhaseCompleted {
		t.Fatalf("migration to the rejoined standby process: %+v %v", res, err)
	}
	if l, code := src.waitExit(t); code != 0 || l != "EXIT ok" {
		t.Fatalf("source ended with %q, status %d", l, code)
	}
	dst.waitReady(t)
	l.advance(t)
	if st := l.long.Stop(); len(st.Failures()) > 0 || st.Alive != st.Streams {
		t.Fatalf("streams: %s\n%s", st, strings.Join(st.Failures(), "\n"))
	}
}

// restartAgent kills the agent child with SIGKILL and starts a new one on
// sock, once it listens.
func restartAgent(t *testing.T, agent *child, sock string) *child {
	t.Helper()
	if err := syscall.Kill(agent.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := agent.wait(childTimeout); !killedBySIGKILL(err) {
		t.Fatalf("agent ended with %v, want SIGKILL", err)
	}
	agent = startChild(t, "agent", "HANDOFF_SOCKET="+sock)
	agent.line("READY", childTimeout)
	return agent
}
