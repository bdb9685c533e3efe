package handoff_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/podid"
	"github.com/handoff-dev/handoff/wire"
)

// TestAskTheAgent starts three streamers without Options.Standby, as a
// workload's pods start them: the agent tells the first to serve, the
// second to wait for a handoff (which it receives, with every stream),
// and the third to wait for one that never comes, after which it serves
// fresh sockets in a session of its own.
func TestAskTheAgent(t *testing.T) {
	var asked atomic.Int32
	ta := startAgent(t, func(c *nodeagent.Config) {
		c.Predecessor = func(podid.Identity) (bool, string) {
			n := asked.Add(1)
			return n > 1, "test"
		}
	})
	src := startStreamer(t, ta.socket, false)
	srcSes := ta.join(t, src.pid)
	if srcSes.Standby {
		t.Fatalf("the first process joined in standby, though the agent told it to serve: %+v", srcSes)
	}
	load := startLoad(t, src.addr, 20)
	load.advance(t)

	dst := startAsking(t, ta.socket)
	ses := ta.join(t, dst.pid)
	if !ses.Standby {
		t.Fatalf("the second process joined as %+v; the agent told it to wait, so it should be in standby", ses)
	}
	res, err := ta.Migrate(srcSes.ID, ses.ID, wire.MoveAll, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantTakeover(t, res, dst, 20, "after the agent told it to wait")
	load.advance(t)
	load.check(t)

	late := startAsking(t, ta.socket, "STANDBY_TIMEOUT=300ms")
	if s := ta.join(t, late.pid); !s.Standby {
		t.Fatalf("the third process joined as %+v; want standby", s)
	}
	// Nothing is handed to it: it gives up after its timeout and joins
	// again, this time to serve.
	again := ta.join(t, late.pid)
	if again.Standby {
		t.Fatalf("after its standby timeout the process joined again as %+v; want a fresh session", again)
	}
	late.waitReady(t)
	if late.imported != 0 || late.addr == "" {
		t.Fatalf("the third process serves on %q with %d imported connections; want fresh sockets", late.addr, late.imported)
	}
	if n := asked.Load(); n != 3 {
		t.Fatalf("the agent was asked %d times; want 3 (a rejoin after the timeout does not ask)", n)
	}
}

// startAsking starts a streamer without STANDBY and returns at once: the
// agent decides whether it waits.
func startAsking(t *testing.T, socket string, env ...string) *streamer {
	t.Helper()
	c := startChild(t, "streamer", append(env, "HANDOFF_SOCKET="+socket, "HANDOFF_NAME=streamer")...)
	return &streamer{child: c, pid: c.cmd.Process.Pid}
}
