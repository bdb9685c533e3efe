package nodeagent_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/nodeagent"
)

func bootNS(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Fatalf("CLOCK_BOOTTIME: %v", err)
	}
	return ts.Nano()
}

// pidfdPid is the pid the kernel reports for a pidfd's process.
func pidfdPid(t *testing.T, pfd int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", pfd))
	if err != nil {
		t.Fatalf("fdinfo of pidfd %d: %v", pfd, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Pid:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("fdinfo of pidfd %d has no Pid: %q", pfd, b)
	return ""
}

// TestPidfdOfPeerFallback: without SO_PEERPIDFD the agent opens a pidfd
// from the pid SO_PEERCRED reported at connect(), and must not take a
// process that got that pid later for the peer. A process that started
// before the connection is identified; one that started after it (as a
// process reusing a dead peer's pid would) is refused, and so is a pid
// whose process is gone.
func TestPidfdOfPeerFallback(t *testing.T) {
	const tick = 10_000_000 // ns: /proc reports start times in USER_HZ (100) ticks
	before := bootNS(t)
	c := startChild(t, "idle", nil)

	pfd, err := nodeagent.PidfdOfPeer(int32(c.pid), bootNS(t))
	if err != nil {
		t.Fatalf("a process that started before the connection: %v", err)
	}
	if got := pidfdPid(t, pfd); got != fmt.Sprint(c.pid) {
		t.Fatalf("pidfd names pid %s, want %d", got, c.pid)
	}
	unix.Close(pfd)

	// As if the connection had been made (by a peer now dead) a tick
	// before this process started.
	if pfd, err := nodeagent.PidfdOfPeer(int32(c.pid), before-tick); err == nil {
		unix.Close(pfd)
		t.Fatalf("pid %d, started after the connection, was taken for the peer", c.pid)
	} else {
		t.Logf("refused as expected: %v", err)
	}

	c.kill()
	if pfd, err := nodeagent.PidfdOfPeer(int32(c.pid), bootNS(t)); err == nil {
		unix.Close(pfd)
		t.Fatalf("pid %d, reaped, was identified", c.pid)
	} else {
		t.Logf("refused as expected: %v", err)
	}
}
