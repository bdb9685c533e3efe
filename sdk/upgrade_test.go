package handoff_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/wire"
)

// Agent upgrades, standalone: a second agent process starts on the socket
// a live agent serves, and the old one hands over its listener and its
// fd store (docs/protocol.md, "Agent upgrades").

// startBystander starts a streamer under a name of its own, so that it
// never matches the store entry of the streamers named "streamer".
func startBystander(t *testing.T, socket string) *streamer {
	t.Helper()
	c := startChild(t, "streamer", "HANDOFF_SOCKET="+socket, "HANDOFF_NAME=bystander")
	s := &streamer{child: c, pid: c.cmd.Process.Pid}
	s.waitReady(t)
	return s
}

// storeStreamer moves a streamer's sockets into the agent's store and
// waits for the streamer to exit, as an in-place restart does.
func storeStreamer(t *testing.T, ac *admin.Client, s *streamer) admin.Result {
	t.Helper()
	ss, err := ac.WaitSession(int32(s.pid), childTimeout)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ac.Do(admin.Request{Op: admin.OpStore, From: ss.ID, HoldMS: 60_000, TimeoutMS: uint32(faultMigrateTimeout / time.Millisecond)}, nil)
	if err != nil {
		t.Fatalf("store: %v", err)
	}
	if r.Result == nil || r.Result.Phase != nodeagent.PhaseCompleted {
		t.Fatalf("store: %+v", r.Result)
	}
	if l, code := s.waitExit(t); code != 0 || l != "EXIT ok" {
		t.Fatalf("stored streamer ended with %q, status %d", l, code)
	}
	return *r.Result
}

// dialLoop connects to the agent socket in a loop until stopped, as an
// application joining at any moment would, and keeps every failure.
type dialLoop struct {
	stop    chan struct{}
	done    chan struct{}
	dials   atomic.Int64
	mu      sync.Mutex
	refused []error
}

func startDialLoop(t *testing.T, socket string) *dialLoop {
	t.Helper()
	d := &dialLoop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(d.done)
		// One connect every 2ms: often enough to land in every phase of
		// a handover, rarely enough not to fill the listener's backlog.
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-d.stop:
				return
			case <-tick.C:
			}
			c, err := net.Dial("unixpacket", socket)
			if err != nil {
				d.mu.Lock()
				d.refused = append(d.refused, err)
				d.mu.Unlock()
				continue
			}
			c.Close()
			d.dials.Add(1)
		}
	}()
	t.Cleanup(d.end)
	return d
}

func (d *dialLoop) end() {
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
	<-d.done
}

// check stops the loop and fails the test if a connect failed.
func (d *dialLoop) check(t *testing.T) {
	t.Helper()
	d.end()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.refused) > 0 {
		t.Fatalf("%d of %d connects to the agent socket failed during the upgrade, first: %v", len(d.refused), int(d.dials.Load())+len(d.refused), d.refused[0])
	}
	if d.dials.Load() == 0 {
		t.Fatal("the dial loop never connected")
	}
}

// TestAgentUpgradeHandsOverStore: the store holds a streamer's sockets
// (an in-place restart) when a new agent process starts on the socket.
// The old agent hands over its listener and the store and exits; the
// streamer started next claims every socket from the new agent; every
// client keeps every byte, the bystanders join the new agent by
// themselves, and no connect to the socket is refused meanwhile.
func TestAgentUpgradeHandsOverStore(t *testing.T) {
	const streams = 40
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	old := startChild(t, "agent", "HANDOFF_SOCKET="+sock)
	old.line("READY", childTimeout)
	src := startStreamer(t, sock, false)
	bys := []*streamer{startBystander(t, sock), startBystander(t, sock)}
	loads := []*load{startLoad(t, src.addr, streams)}
	for _, b := range bys {
		loads = append(loads, startLoad(t, b.addr, 8))
	}
	ac, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bys {
		if _, err := ac.WaitSession(int32(b.pid), childTimeout); err != nil {
			t.Fatal(err)
		}
	}
	res := storeStreamer(t, ac, src)
	ac.Close()

	dials := startDialLoop(t, sock)
	start := time.Now()
	succ := startChild(t, "agent", "HANDOFF_SOCKET="+sock)
	succ.line("READY", childTimeout)
	listening := time.Since(start)
	if l := old.line("EXIT", childTimeout); l != "EXIT ok" {
		t.Fatalf("old agent: %s", l)
	}
	if err := old.wait(childTimeout); err != nil {
		t.Fatalf("old agent exited with %v", err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("the socket path after the upgrade: %v", err)
	}
	ac, err = admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	for _, b := range bys {
		if _, err := ac.WaitSession(int32(b.pid), childTimeout); err != nil {
			t.Fatalf("bystander %d did not join the new agent: %v", b.pid, err)
		}
	}
	rejoined := time.Since(start)
	r, err := ac.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Stored) != 1 || r.Stored[0].Name != "streamer" || r.Stored[0].Connections != res.Connections || r.Stored[0].Listeners != res.Listeners {
		t.Fatalf("the new agent holds %+v, want what the old one stored: %d listeners, %d connections", r.Stored, res.Listeners, res.Connections)
	}
	if left := time.Until(r.Stored[0].Expires); left <= 0 || left > time.Minute {
		t.Fatalf("the handed-over hold ends in %v, want what remained of the minute", left)
	}
	dials.check(t)

	next := startStreamer(t, sock, false)
	if next.imported != res.Connections {
		t.Fatalf("the next streamer imported %d connections from the new agent, want %d", next.imported, res.Connections)
	}
	if next.addr != src.addr {
		t.Fatalf("the next streamer serves %s, want the stored listener's %s", next.addr, src.addr)
	}
	for _, l := range loads {
		l.advance(t)
	}
	r, err = ac.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Stored) != 0 {
		t.Fatalf("the new agent still holds %+v after the claim", r.Stored)
	}
	for _, l := range loads {
		if st := l.long.Stop(); len(st.Failures()) > 0 || st.Alive != st.Streams {
			t.Fatalf("streams: %s\n%s", st, strings.Join(st.Failures(), "\n"))
		}
	}
	t.Logf("agent upgrade with %d stored connections: the new agent listened %v after it started; %d streamers rejoined it within %v of its start",
		res.Connections, listening.Round(time.Millisecond), len(bys), rejoined.Round(time.Millisecond))
}

// TestAgentUpgradeWaitsForMigration: an upgrade that begins while a
// migration runs waits for it; the migration completes, then the old agent
// hands over, and the streamer is migratable through the new agent.
func TestAgentUpgradeWaitsForMigration(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	old := startChild(t, "agent", "HANDOFF_SOCKET="+sock)
	old.line("READY", childTimeout)
	src := startStreamer(t, sock, false)
	l := startLoad(t, src.addr, 20)
	gate := filepath.Join(t.TempDir(), "go")
	dst := startStreamer(t, sock, true, "HOLD_AT=before-ready:"+gate)
	ac, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	ss, err := ac.WaitSession(int32(src.pid), childTimeout)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := ac.WaitSession(int32(dst.pid), childTimeout)
	if err != nil {
		t.Fatal(err)
	}
	type outcome struct {
		res *admin.Result
		err error
		at  time.Time
	}
	migrated := make(chan outcome, 1)
	go func() {
		res, err := ac.Migrate(admin.Request{From: ss.ID, To: ds.ID, TimeoutMS: uint32(faultMigrateTimeout / time.Millisecond)}, nil)
		migrated <- outcome{res, err, time.Now()}
	}()
	dst.line("HELD before-ready", childTimeout)

	succ := startChild(t, "agent", "HANDOFF_SOCKET="+sock)
	// The old agent refuses new transactions once the handover began;
	// until then a second migration of the busy pair is refused as busy.
	probe, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(childTimeout)
	for {
		_, err := probe.Migrate(admin.Request{From: ss.ID, To: ds.ID}, nil)
		if err != nil && strings.Contains(err.Error(), nodeagent.ErrHandingOver.Error()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old agent did not begin the handover: %v", err)
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a bounded condition wait
	}
	probe.Close()
	select {
	case l := <-succ.lines:
		t.Fatalf("the new agent printed %q while a migration ran on the old one", l)
	case o := <-migrated:
		t.Fatalf("the migration ended while held: %+v %v", o.res, o.err)
	default:
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	o := <-migrated
	if o.err != nil || o.res.Phase != nodeagent.PhaseCompleted {
		t.Fatalf("migration during the upgrade: %+v %v", o.res, o.err)
	}
	succ.line("READY", childTimeout)
	if l := old.line("EXIT", childTimeout); l != "EXIT ok" {
		t.Fatalf("old agent: %s", l)
	}
	if l, code := src.waitExit(t); code != 0 || l != "EXIT ok" {
		t.Fatalf("source ended with %q, status %d", l, code)
	}
	dst.waitReady(t)
	l.advance(t)

	// The moved streamer joins the new agent, and moves again through it.
	ac2, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ac2.Close()
	ds2, err := ac2.WaitSession(int32(dst.pid), childTimeout)
	if err != nil {
		t.Fatalf("the migrated streamer did not join the new agent: %v", err)
	}
	third := startStreamer(t, sock, true)
	ts, err := ac2.WaitSession(int32(third.pid), childTimeout)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ac2.Migrate(admin.Request{From: ds2.ID, To: ts.ID, TimeoutMS: uint32(faultMigrateTimeout / time.Millisecond)}, nil)
	if err != nil || res.Phase != nodeagent.PhaseCompleted {
		t.Fatalf("migration through the new agent: %+v %v", res, err)
	}
	third.waitReady(t)
	l.advance(t)
	if st := l.long.Stop(); len(st.Failures()) > 0 || st.Alive != st.Streams {
		t.Fatalf("streams: %s\n%s", st, strings.Join(st.Failures(), "\n"))
	}
}

// startNamed starts a streamer named name and waits until it serves.
func startNamed(t *testing.T, socket, name string) *streamer {
	t.Helper()
	c := startChild(t, "streamer", "HANDOFF_SOCKET="+socket, "HANDOFF_NAME="+name)
	s := &streamer{child: c, pid: c.cmd.Process.Pid}
	s.waitReady(t)
	return s
}

// TestAgentUpgradeOldDiesMidway: the old agent is killed (SIGKILL) after
// it sent its listener and the first of two store entries. The new agent
// serves with the listener and the entry it received whole, whose next
// process claims every socket with every byte; the second entry is lost
// with the old agent, as docs/protocol.md says.
func TestAgentUpgradeOldDiesMidway(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	old := startChild(t, "agent", "HANDOFF_SOCKET="+sock, "AGENT_CRASH_AT=handover-entry")
	old.line("READY", childTimeout)
	first, second := startNamed(t, sock, "first"), startNamed(t, sock, "second")
	l := startLoad(t, first.addr, 20)
	ac, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	// Entries go over in the order their holds end: first's first.
	res := storeStreamer(t, ac, first)
	storeStreamer(t, ac, second)
	ac.Close()

	succ := startChild(t, "agent", "HANDOFF_SOCKET="+sock)
	if err := old.wait(childTimeout); !killedBySIGKILL(err) {
		t.Fatalf("old agent ended with %v, want SIGKILL at its fault point", err)
	}
	succ.line("READY", childTimeout)
	ac, err = admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	r, err := ac.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Stored) != 1 || r.Stored[0].Name != "first" || r.Stored[0].Connections != res.Connections {
		t.Fatalf("the new agent holds %+v, want only the entry it received whole (first, %d connections)", r.Stored, res.Connections)
	}
	next := startNamed(t, sock, "first")
	if next.imported != res.Connections || next.addr != first.addr {
		t.Fatalf("the next process imported %d connections on %s, want %d on %s", next.imported, next.addr, res.Connections, first.addr)
	}
	l.advance(t)
	if st := l.long.Stop(); len(st.Failures()) > 0 || st.Alive != st.Streams {
		t.Fatalf("streams: %s\n%s", st, strings.Join(st.Failures(), "\n"))
	}
}

// TestAgentUpgradeWaitsForAwaitedStore: the store holds a streamer's
// sockets for a caller that waits for their delivery (an in-place
// restart's Migration, whose outcome the old agent reports) when a new
// agent starts. The old agent counts it as a running transaction: it
// hands over only once the next streamer claimed the sockets from it and
// the caller heard so; the new agent then holds nothing, and the streamer
// joins it.
func TestAgentUpgradeWaitsForAwaitedStore(t *testing.T) {
	const streams = 30
	ta := startAgent(t)
	src := startStreamer(t, ta.socket, false)
	l := startLoad(t, src.addr, streams)
	ss := ta.join(t, src.pid)
	outcome := make(chan admin.Result, 1)
	res, err := ta.StoreFromWith(ss.ID, wire.MoveAll, faultMigrateTimeout, time.Minute, nil,
		nodeagent.StoreOptions{Delivered: func(r admin.Result) { outcome <- r }})
	if err != nil || res.Phase != nodeagent.PhaseCompleted {
		t.Fatalf("store: %+v %v", res, err)
	}
	if l, code := src.waitExit(t); code != 0 || l != "EXIT ok" {
		t.Fatalf("stored streamer ended with %q, status %d", l, code)
	}

	succ := startChild(t, "agent", "HANDOFF_SOCKET="+ta.socket)
	deadline := time.Now().Add(childTimeout)
	for !ta.HandingOver() {
		if time.Now().After(deadline) {
			t.Fatal("the old agent did not begin the handover")
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a bounded condition wait
	}
	next := startStreamer(t, ta.socket, false)
	if next.imported != res.Connections {
		t.Fatalf("the next streamer imported %d connections, want %d", next.imported, res.Connections)
	}
	select {
	case r := <-outcome:
		if r.Phase != nodeagent.PhaseCompleted {
			t.Fatalf("delivery: %+v", r)
		}
	case <-time.After(childTimeout):
		t.Fatal("the caller never heard of the delivery")
	}
	succ.line("READY", childTimeout)
	if !ta.HandedOver() {
		t.Fatal("the new agent serves, and the old one says it did not hand over")
	}
	// Its probes: alive while the successor answers (a restart would
	// take everything back), not ready (it serves nothing).
	if err := ta.Healthy(); err != nil {
		t.Fatalf("the old agent after the handover: unhealthy: %v", err)
	}
	if err := ta.Ready(); err == nil {
		t.Fatal("the old agent after the handover says it is ready")
	}
	ac, err := admin.Dial(ta.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	if _, err := ac.WaitSession(int32(next.pid), childTimeout); err != nil {
		t.Fatalf("the streamer did not join the new agent: %v", err)
	}
	r, err := ac.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Stored) != 0 {
		t.Fatalf("the new agent holds %+v; the claim came before the handover", r.Stored)
	}
	l.advance(t)
	if st := l.long.Stop(); len(st.Failures()) > 0 || st.Alive != st.Streams {
		t.Fatalf("streams: %s\n%s", st, strings.Join(st.Failures(), "\n"))
	}
}
