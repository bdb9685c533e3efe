package handoff_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	handoff "github.com/handoff-dev/handoff/sdk"
	"github.com/handoff-dev/handoff/wire"
)

// TestPrecopyVersions migrates a streamer under load between processes
// that offer different protocol versions: the pre-copy runs only when
// both agreed on version 3 with the agent, and an older peer on either
// side still migrates, without one, losing nothing.
func TestPrecopyVersions(t *testing.T) {
	for _, tc := range []struct{ src, dst int }{{3, 3}, {2, 3}, {3, 2}, {1, 1}} {
		t.Run(fmt.Sprintf("source v%d target v%d", tc.src, tc.dst), func(t *testing.T) {
			const streams = 100
			f := setupSource(t, streams, fmt.Sprintf("MAX_VERSION=%d", tc.src))
			dst := startStreamer(t, f.ta.socket, true, fmt.Sprintf("MAX_VERSION=%d", tc.dst))
			ds := f.ta.join(t, dst.pid)
			res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, faultMigrateTimeout, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantTakeover(t, res, dst, streams, "")
			precopy := tc.src == 3 && tc.dst == 3
			switch {
			case precopy && res.Copies < streams+1:
				t.Fatalf("pre-copy sent %d copies, want the listener and at least the %d streams", res.Copies, streams)
			case !precopy && res.Copies != 0:
				t.Fatalf("%d copies between versions %d and %d: a pre-copy needs both on version 3", res.Copies, tc.src, tc.dst)
			}
			t.Logf("moved %d connections, %d copies (%d dropped), pause %v, pre-copy %v", res.Connections, res.Copies, res.Dropped, res.Pause(), time.Duration(res.PrecopyNS))
			f.checkStreamsCarriedOn(t)
		})
	}
}

// TestPrecopyChurn holds the source between its pre-copy and its freeze
// for a while under a steady stream of new short connections: some
// copies are closed before the freeze (dropped), some connections are
// accepted after the copies were taken (sent in ordinary batches), and
// every stream and every short connection keeps every byte.
func TestPrecopyChurn(t *testing.T) {
	const streams = 200
	f := setupSource(t, streams, "STALL_AT=precopied:300ms")
	f.load.startShort(t, f.src.addr, 100)
	dst := startStreamer(t, f.ta.socket, true)
	ds := f.ta.join(t, dst.pid)
	res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, faultMigrateTimeout, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantTakeover(t, res, dst, streams, "")
	kept := res.Copies - res.Dropped
	fresh := res.Connections + res.Listeners - kept
	t.Logf("copies %d, dropped %d, sent after the freeze %d; moved %d connections, pause %v, pre-copy %v",
		res.Copies, res.Dropped, fresh, res.Connections, res.Pause(), time.Duration(res.PrecopyNS))
	if res.Dropped == 0 || fresh == 0 {
		t.Fatalf("no churn between the pre-copy and the freeze (%d dropped, %d sent after): the test did not test it", res.Dropped, fresh)
	}
	f.checkStreamsCarriedOn(t)
}

// socketInodes is the set of sockets a process holds, by inode.
func socketInodes(t *testing.T, pid int) map[string]bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("list descriptors of %d: %v", pid, err)
	}
	set := map[string]bool{}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			set[l] = true
		}
	}
	return set
}

// shared counts the sockets of a that b holds too.
func shared(a, b map[string]bool) int {
	n := 0
	for k := range a {
		if b[k] {
			n++
		}
	}
	return n
}

// startHeldApp starts a test app that holds after its pre-copy until gate
// exists, with n connections (TCP and unix in turn), each pinged once.
func startHeldApp(t *testing.T, ta *testAgent, uds, gate string, n int) (*app, admin.Session, []*appConn) {
	t.Helper()
	a := startApp(t, ta, "app", uds, false, "HOLD_AT=precopied:"+gate)
	sa := ta.join(t, a.pid)
	conns := make([]*appConn, n)
	for i := range conns {
		network, addr := "tcp", a.tcp
		if i%2 == 1 {
			network, addr = "unix", a.uds
		}
		conns[i] = dialApp(t, network, addr, uint64(i+1))
		conns[i].ping(t)
	}
	return a, sa, conns
}

// waitShared waits until process pid holds want of the sockets in set.
func waitShared(t *testing.T, set map[string]bool, pid, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := shared(set, socketInodes(t, pid))
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d holds %d of the source's sockets, want %d", pid, got, want)
		}
		time.Sleep(5 * time.Millisecond) // bounded poll of /proc: nothing to wait on
	}
}

// TestPrecopyCloseDuringCopy holds the source right after its pre-copy,
// while the target holds a copy of every socket, and checks what the
// pre-copy must not change: the source serves on (old and new
// connections), a connection the server ends meanwhile ends for its
// client at once (the SDK shuts it down: the target's copy would
// otherwise keep it open), and after the migration the target holds
// exactly the sockets that moved, not the copy of the closed one.
func TestPrecopyCloseDuringCopy(t *testing.T) {
	const n = 40
	ta := startAgent(t)
	uds := filepath.Join(t.TempDir(), "app.sock")
	gate := filepath.Join(t.TempDir(), "go-ahead")
	a, sa, conns := startHeldApp(t, ta, uds, gate, n)
	before := socketInodes(t, a.pid)

	b := startApp(t, ta, "app", uds, true)
	sb := ta.join(t, b.pid)
	done := make(chan admin.Result, 1)
	go func() {
		res, err := ta.Migrate(sa.ID, sb.ID, wire.MoveAll, 30*time.Second, nil)
		if err != nil {
			res.Message = err.Error()
		}
		done <- res
	}()
	a.line("HELD precopied", 20*time.Second)
	// The copies are on their way through the agent: wait until the
	// target holds every one (the connections, 2 listeners, 1 packet socket).
	waitShared(t, before, b.pid, n+3)

	// The server ends connection 1: its client must see the end now, not
	// when the migration drops the target's copy.
	closed := conns[0]
	closed.c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := closed.c.Write([]byte{'c'}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := closed.c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection ended by the server during the pre-copy: read %v, want EOF", err)
	}
	t.Logf("the client saw the end %v after asking, with the migration held", time.Since(start).Round(time.Microsecond))
	// The source serves on meanwhile, old and new connections alike.
	for _, c := range conns[1:] {
		if r := c.ping(t); r.PID != uint32(a.pid) || r.Count != 2 {
			t.Fatalf("during the pre-copy conn %d: %+v, want the source %d, count 2", c.id, r, a.pid)
		}
	}
	fresh := dialApp(t, "tcp", a.tcp, 1000)
	if r := fresh.ping(t); r.PID != uint32(a.pid) {
		t.Fatalf("new connection during the pre-copy served by %d, want the source %d", r.PID, a.pid)
	}

	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.Phase != nodeagent.PhaseCompleted {
		t.Fatalf("migration %s: %s: %s", res.Phase, res.Reason, res.Message)
	}
	if res.Dropped != 1 || res.Connections != n {
		t.Fatalf("moved %d connections with %d copies dropped; want %d (the %d left and the new one) and 1", res.Connections, res.Dropped, n, n-1)
	}
	b.waitReady(t)
	if l := a.line("EXIT", 30*time.Second); l != "EXIT ok" {
		t.Fatalf("source: %s", l)
	}
	if got := shared(before, socketInodes(t, b.pid)); got != n-1+3 {
		t.Fatalf("the target holds %d of the source's original sockets, want %d: the copy of the closed connection must be gone", got, n-1+3)
	}
	for _, c := range append(conns[1:], fresh) {
		want := uint64(3)
		if c == fresh {
			want = 2
		}
		if r := c.ping(t); r.PID != uint32(b.pid) || r.Count != want || !r.StateOK {
			t.Fatalf("after the migration conn %d: %+v, want the target %d, count %d, state intact", c.id, r, b.pid, want)
		}
	}
}

// TestPrecopyAbortDropsCopies aborts a migration after the pre-copy (its
// deadline passes while the source is held there) with the agent and the
// target in this process: afterwards neither holds any of the source's
// sockets, and the source serves every connection on with exactly the
// descriptors it had.
func TestPrecopyAbortDropsCopies(t *testing.T) {
	const n = 60
	ta := startAgent(t)
	uds := filepath.Join(t.TempDir(), "app.sock")
	gate := filepath.Join(t.TempDir(), "go-ahead")
	a, sa, conns := startHeldApp(t, ta, uds, gate, n)
	before := socketInodes(t, a.pid)
	baseFD := fdCount(t, a.pid)

	joined := make(chan error, 1)
	go func() {
		p, err := handoff.Join(context.Background(), handoff.Options{Socket: ta.socket, Name: "app", Standby: true, Logf: t.Logf})
		if p != nil {
			p.Close()
		}
		joined <- err
	}()
	sb := ta.join(t, os.Getpid())
	done := make(chan admin.Result, 1)
	go func() {
		res, _ := ta.Migrate(sa.ID, sb.ID, wire.MoveAll, time.Second, nil)
		done <- res
	}()
	a.line("HELD precopied", 20*time.Second)
	waitShared(t, before, os.Getpid(), n+3)
	if err := <-joined; !errors.Is(err, handoff.ErrAborted) {
		t.Fatalf("target's Join: %v, want ErrAborted", err)
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	res := <-done
	wantFailed(t, res, wire.CodeDeadline)
	if got := shared(before, socketInodes(t, os.Getpid())); got != 0 {
		t.Fatalf("after the abort the agent and the target still hold %d of the source's sockets", got)
	}
	waitFDCount(t, a.pid, baseFD)
	for _, c := range conns {
		if r := c.ping(t); r.PID != uint32(a.pid) || r.Count != 2 || !r.StateOK {
			t.Fatalf("after the abort conn %d: %+v, want the source %d, count 2", c.id, r, a.pid)
		}
	}
}

// TestPrecopyTargetCrash kills the target when the first copy batch
// reaches it, while the source, held after that batch until the agent's
// abort has reached it, is still copying: the source stops the pre-copy, keeps serving every
// stream, and holds exactly the descriptors it held before (none of the
// duplicates it took for the copies stays open).
func TestPrecopyTargetCrash(t *testing.T) {
	const streams = 700 // three copy batches
	// The source holds after its first copy batch until the agent's
	// abort (the target died on that batch) has reached it.
	f := setupSource(t, streams, "HOLD_AT=copy-sent", "HOLD_UNTIL=abort-received")
	dst := startStreamer(t, f.ta.socket, true, "CRASH_AT=batch")
	ds := f.ta.join(t, dst.pid)
	res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, faultMigrateTimeout, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantFailed(t, res, wire.CodeTargetLost)
	if res.Copies >= streams {
		t.Fatalf("the source copied %d sockets: the crash came after the pre-copy, not during it", res.Copies)
	}
	f.checkSourceResumed(t)
}
