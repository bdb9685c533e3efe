package handoff_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/fdlimit"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/wire"
)

// rssKB is a process's resident set size, from /proc/pid/status.
func rssKB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// TestAgentFootprint measures the agent's resident memory idle and with
// 1,000 application sessions joined, the agent in a child process of its
// own (this test binary re-executed, running only the agent). It prints
// both; it fails only if 1,000 sessions cost more than 100 MiB (500 MiB
// with the race detector).
func TestAgentFootprint(t *testing.T) {
	const sessions = 1000
	// The agent inherits the raised limit; this process holds the other
	// end of every session.
	if soft, _, err := fdlimit.Raise(); err != nil || soft < 2*sessions+100 {
		t.Fatalf("open-file limit %d (%v): this test needs %d; raise the hard limit", soft, err, 2*sessions+100)
	}
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	agent := startChild(t, "agent", "HANDOFF_SOCKET="+sock)
	agent.line("READY", childTimeout)
	pid := agent.cmd.Process.Pid
	ac, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	if _, err := ac.Sessions(); err != nil {
		t.Fatal(err)
	}
	idle := rssKB(t, pid)

	start := time.Now()
	conns := make([]*wire.Conn, 0, sessions)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range sessions {
		c, err := wire.Dial(sock)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		conns = append(conns, c)
		h := wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, Role: wire.RoleApp, Name: fmt.Sprintf("app-%d", i)}
		if err := c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeHello}, Body: h.Marshal()}); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(childTimeout))
		m, err := c.Recv()
		if err != nil || m.Type != wire.TypeWelcome {
			t.Fatalf("session %d: %v %v", i, m.Type, err)
		}
	}
	joined := time.Since(start)
	// Every session has its Welcome: the agent has listed it. (A list of
	// 1,000 sessions is more than one Response carries.)
	busy := rssKB(t, pid)
	// The race detector (make test) multiplies memory several times over:
	// the numbers worth quoting are those of a plain go test.
	limit, build := 100<<10, ""
	if raceDetector {
		limit, build = 500<<10, " (race detector built in: several times the real figures)"
	}
	t.Logf("agent RSS%s: %.1f MiB idle, %.1f MiB with %d sessions (%.1f KiB a session); %d sessions joined in %v", build,
		float64(idle)/1024, float64(busy)/1024, sessions, float64(busy-idle)/sessions, sessions, joined.Round(time.Millisecond))
	if busy-idle > limit {
		t.Fatalf("%d sessions cost the agent %d KiB, more than %d KiB", sessions, busy-idle, limit)
	}
}
