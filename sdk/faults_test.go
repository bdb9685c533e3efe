package handoff_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/wire"
)

// Fault tests: a real streaming server (examples/streamer) in a child
// process, the verifying load client in this one, and a fault injected at
// an exact protocol step. Whatever fails, the source must carry on with
// every stream, lose and duplicate nothing, and leak no descriptor.

const (
	faultMigrateTimeout = 10 * time.Second
	childTimeout        = 20 * time.Second
)

// streamer is a streaming server running in a child process.
type streamer struct {
	*child
	pid      int
	addr     string
	imported int
}

// startStreamer starts a streamer on the agent socket. A fresh one is
// returned once it serves; a standby one at once.
func startStreamer(t *testing.T, socket string, standby bool, env ...string) *streamer {
	t.Helper()
	env = append(env, "HANDOFF_SOCKET="+socket, "HANDOFF_NAME=streamer")
	if standby {
		env = append(env, "STANDBY=1")
	}
	c := startChild(t, "streamer", env...)
	s := &streamer{child: c, pid: c.cmd.Process.Pid}
	if !standby {
		s.waitReady(t)
	}
	return s
}

func (s *streamer) waitReady(t *testing.T) {
	t.Helper()
	l := s.line("READY", childTimeout)
	s.addr = field(l, "addr")
	s.imported, _ = strconv.Atoi(field(l, "imported"))
}

// waitExit waits for the EXIT line and the exit status, and returns both.
func (s *streamer) waitExit(t *testing.T) (string, int) {
	t.Helper()
	l := s.line("EXIT", childTimeout)
	return l, exitCode(s.wait(childTimeout))
}

// exitCode is the exit status of a process that exited, -1 for one killed
// by a signal.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -2
}

// killedBySIGKILL reports whether a child's Wait error says SIGKILL.
func killedBySIGKILL(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// load is the verifying client: long-lived streams, and short connections
// in a client of their own so that they can be stopped before descriptors
// are counted.
type load struct {
	long, short *loadclient.Client
}

func startLoad(t *testing.T, addr string, streams int) *load {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	long, err := loadclient.Start(ctx, loadclient.Config{Addr: addr, Streams: streams, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { long.Stop() })
	return &load{long: long}
}

// startShort starts the short connections.
func (l *load) startShort(t *testing.T, addr string, rate float64) {
	t.Helper()
	short, err := loadclient.Start(context.Background(), loadclient.Config{Addr: addr, NamePrefix: "short-", NewConnRate: rate, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { short.Stop() })
	l.short = short
}

// waitShort waits until n more short connections than now have been
// served completely (a bounded poll of the client's counters).
func (l *load) waitShort(t *testing.T, n int64) {
	t.Helper()
	want := l.short.Snapshot().ShortOK + n
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		st := l.short.Snapshot()
		if st.ShortOK >= want {
			return
		}
		if f := st.Failures(); len(f) > 0 {
			t.Fatalf("short connections failed: %s\n%s", st, strings.Join(f, "\n"))
		}
		if time.Now().After(deadline) {
			t.Fatalf("short connections: %d served, waited for %d: %s", st.ShortOK, want, st)
		}
		<-tick.C
	}
}

// stopShort checks that short connections opened after the fault are
// served, stops them and checks that none failed.
func (l *load) stopShort(t *testing.T) {
	t.Helper()
	l.waitShort(t, 3)
	st := l.short.Stop()
	if f := st.Failures(); len(f) > 0 {
		t.Fatalf("short connections failed: %s\n%s", st, strings.Join(f, "\n"))
	}
}

// advance checks that no stream failed and waits until every stream has
// received more bytes since now.
func (l *load) advance(t *testing.T) {
	t.Helper()
	m := l.long.Mark()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := l.long.WaitAdvanced(ctx, m, 1); err != nil {
		t.Fatal(err)
	}
	l.check(t)
}

// check fails the test if the client saw anything a migration must not
// cause.
func (l *load) check(t *testing.T) {
	t.Helper()
	st := l.long.Snapshot()
	if f := st.Failures(); len(f) > 0 {
		t.Fatalf("streams failed: %s\n%s", st, strings.Join(f, "\n"))
	}
	if st.Alive != st.Streams {
		t.Fatalf("%d of %d streams alive", st.Alive, st.Streams)
	}
}

// fdList describes a process's descriptors, for failure messages.
func fdList(pid int) string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	kinds := map[string]int{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if strings.HasPrefix(l, "socket:") {
			l = "socket"
		}
		kinds[l]++
	}
	var out []string
	for k, n := range kinds {
		out = append(out, fmt.Sprintf("%s×%d", k, n))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// waitFDCount polls /proc until pid has exactly want descriptors, for at
// most 10 s.
func waitFDCount(t *testing.T, pid, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		got := fdCount(t, pid)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d has %d descriptors, want %d as before the migration: %s", pid, got, want, fdList(pid))
		}
		<-tick.C
	}
}

// faultSetup is a serving source with streams, and its baseline.
type faultSetup struct {
	ta     *testAgent
	src    *streamer
	srcSes admin.Session
	load   *load
	baseFD int
}

// setupSource starts an agent in this process, a streamer with streams
// long-lived connections, records its descriptor count, and starts the
// short connections.
func setupSource(t *testing.T, streams int, srcEnv ...string) *faultSetup {
	t.Helper()
	ta := startAgent(t)
	src := startStreamer(t, ta.socket, false, srcEnv...)
	f := &faultSetup{ta: ta, src: src, srcSes: ta.join(t, src.pid)}
	f.load = startLoad(t, src.addr, streams)
	// Every stream has been accepted, tracked and served: the set of
	// descriptors is stable until short connections start.
	f.baseFD = fdCount(t, src.pid)
	f.load.startShort(t, src.addr, 50)
	f.load.waitShort(t, 1)
	return f
}

// checkSourceResumed checks, after an aborted migration, that the source
// serves every stream on, that nothing was lost, and that it holds exactly
// the descriptors it held before.
func (f *faultSetup) checkSourceResumed(t *testing.T) {
	t.Helper()
	f.load.advance(t)
	f.load.stopShort(t)
	waitFDCount(t, f.src.pid, f.baseFD)
	// New connections are still accepted by the source: the short ones
	// were stopped, so open a few streams afresh.
	extra := startLoad(t, f.src.addr, 4)
	extra.advance(t)
	if st := extra.long.Stop(); len(st.Failures()) > 0 {
		t.Fatalf("new streams after the abort: %s", strings.Join(st.Failures(), "\n"))
	}
	f.load.advance(t)
	if st := f.load.long.Stop(); len(st.Failures()) > 0 || st.Alive != st.Streams {
		t.Fatalf("streams: %s\n%s", st, strings.Join(st.Failures(), "\n"))
	} else {
		t.Logf("client: %s", st)
	}
}

// wantTakeover checks that a migration completed with the target taking
// over, ready and holding at least the streams (short connections in
// flight are imported too).
func wantTakeover(t *testing.T, res admin.Result, dst *streamer, streams int, why string) {
	t.Helper()
	if res.Phase != nodeagent.PhaseCompleted {
		t.Fatalf("migration %s: %s: %s; want the target to take over %s", res.Phase, res.Reason, res.Message, why)
	}
	dst.waitReady(t)
	if dst.imported < streams {
		t.Fatalf("target imported %d connections, want at least the %d streams", dst.imported, streams)
	}
}

// checkStreamsCarriedOn checks, after a migration, that every stream
// carries on with nothing lost, whoever serves it now.
func (f *faultSetup) checkStreamsCarriedOn(t *testing.T) {
	t.Helper()
	f.load.advance(t)
	f.load.stopShort(t)
	if st := f.load.long.Stop(); len(st.Failures()) > 0 || st.Alive != st.Streams {
		t.Fatalf("streams: %s\n%s", st, strings.Join(st.Failures(), "\n"))
	} else {
		t.Logf("client: %s", st)
	}
}

func wantFailed(t *testing.T, res admin.Result, code wire.Code) {
	t.Helper()
	if res.Phase != nodeagent.PhaseFailed || res.Code != code || res.Reason != code.String() {
		t.Fatalf("migration %s: %s (%s): %s; want %s: %s", res.Phase, res.Code, res.Reason, res.Message, nodeagent.PhaseFailed, code)
	}
	t.Logf("migration failed as it should after %v: %s: %s", res.Duration().Round(time.Millisecond), res.Reason, res.Message)
}

// wantAborted checks that a target's Run ended in ErrAborted and that the
// process exited with the child's error status.
func wantAborted(t *testing.T, s *streamer) {
	t.Helper()
	l, code := s.waitExit(t)
	if !strings.Contains(l, "incoming handoff aborted") || code != 3 {
		t.Fatalf("target %d ended with %q, status %d; want ErrAborted and status 3", s.pid, l, code)
	}
}

// TestFaults injects each fault the transaction must survive.
func TestFaults(t *testing.T) {
	t.Run("TargetCrash", testTargetCrash)
	t.Run("AgentCrash", testAgentCrash)
	t.Run("SourceCrash", testSourceCrash)
	t.Run("SourceCrashAfterExport", testSourceCrashAfterExport)
	t.Run("TargetEMFILE", testTargetEMFILE)
	t.Run("Deadline", testDeadline)
	t.Run("SourceStoppedAfterExport", testSourceStoppedAfterExport)
	t.Run("SourceStoppedAfterCommit", testSourceStoppedAfterCommit)
	t.Run("SourceClosedAfterExport", testSourceClosedAfterExport)
}

// testTargetCrash kills the target with SIGKILL at each of its
// protocol steps.
func testTargetCrash(t *testing.T) {
	for _, step := range []string{"begin", "batch", "end", "before-ready"} {
		t.Run(step, func(t *testing.T) {
			f := setupSource(t, 100)
			dst := startStreamer(t, f.ta.socket, true, "CRASH_AT="+step)
			ds := f.ta.join(t, dst.pid)
			res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, faultMigrateTimeout, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantFailed(t, res, wire.CodeTargetLost)
			if err := dst.wait(childTimeout); !killedBySIGKILL(err) {
				t.Fatalf("target ended with %v, want SIGKILL at %q", err, step)
			}
			f.checkSourceResumed(t)
		})
	}
}

// testAgentCrash kills the agent (a child process here) with SIGKILL
// after it relayed the first of several batches.
func testAgentCrash(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	agent := startChild(t, "agent", "HANDOFF_SOCKET="+sock, "AGENT_CRASH_AT=relayed-batch")
	agent.line("READY", childTimeout)
	ac, err := admin.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()

	const streams = 300 // more than one batch of wire.MaxFDs
	src := startStreamer(t, sock, false)
	ss, err := ac.WaitSession(int32(src.pid), childTimeout)
	if err != nil {
		t.Fatal(err)
	}
	ld := startLoad(t, src.addr, streams)
	baseFD := fdCount(t, src.pid)
	ld.startShort(t, src.addr, 50)
	ld.waitShort(t, 1)
	f := &faultSetup{src: src, srcSes: ss, load: ld, baseFD: baseFD}

	dst := startStreamer(t, sock, true)
	ds, err := ac.WaitSession(int32(dst.pid), childTimeout)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ac.Migrate(admin.Request{From: ss.ID, To: ds.ID, TimeoutMS: uint32(faultMigrateTimeout / time.Millisecond)}, nil)
	if err == nil {
		t.Fatalf("migrate answered %+v although the agent was killed", res)
	}
	t.Logf("migrate: %v (expected: the agent died)", err)
	if err := agent.wait(childTimeout); !killedBySIGKILL(err) {
		t.Fatalf("agent ended with %v, want SIGKILL", err)
	}
	wantAborted(t, dst)
	f.checkSourceResumed(t)
}

// testSourceCrash kills the source before it exports anything: the
// streams die with it, the target must drop what it got and the agent
// serve on.
func testSourceCrash(t *testing.T) {
	ta := startAgent(t)
	src := startStreamer(t, ta.socket, false, "CRASH_AT=prepare")
	ss := ta.join(t, src.pid)
	ld := startLoad(t, src.addr, 100)
	ld.startShort(t, src.addr, 50)
	dst := startStreamer(t, ta.socket, true)
	ds := ta.join(t, dst.pid)
	res, err := ta.Migrate(ss.ID, ds.ID, wire.MoveAll, faultMigrateTimeout, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantFailed(t, res, wire.CodeSourceLost)
	if err := src.wait(childTimeout); !killedBySIGKILL(err) {
		t.Fatalf("source ended with %v, want SIGKILL at prepare", err)
	}
	wantAborted(t, dst)
	ld.long.Stop()
	ld.short.Stop()

	// The agent serves on: a new process joins and can be migrated.
	again := startStreamer(t, ta.socket, false)
	as := ta.join(t, again.pid)
	ld2 := startLoad(t, again.addr, 20)
	next := startStreamer(t, ta.socket, true)
	ns := ta.join(t, next.pid)
	res, err = ta.Migrate(as.ID, ns.ID, wire.MoveAll, faultMigrateTimeout, nil)
	if err != nil || res.Phase != nodeagent.PhaseCompleted {
		t.Fatalf("migration after the source crash: %+v, %v", res, err)
	}
	next.waitReady(t)
	ld2.advance(t)
}

// testSourceCrashAfterExport kills the source right after it exported
// everything, and lets the target say Ready only once the source is dead:
// the source's copies are gone, so the target must take over and serve
// every stream rather than drop what it holds.
func testSourceCrashAfterExport(t *testing.T) {
	const streams = 100
	f := setupSource(t, streams, "CRASH_AT=exported")
	gate := filepath.Join(t.TempDir(), "go-ahead")
	dst := startStreamer(t, f.ta.socket, true, "HOLD_AT=before-ready:"+gate)
	ds := f.ta.join(t, dst.pid)
	type answer struct {
		res admin.Result
		err error
	}
	done := make(chan answer, 1)
	go func() {
		res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, faultMigrateTimeout, nil)
		done <- answer{res, err}
	}()
	if err := f.src.wait(childTimeout); !killedBySIGKILL(err) {
		t.Fatalf("source ended with %v, want SIGKILL after exported", err)
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a := <-done
	if a.err != nil {
		t.Fatal(a.err)
	}
	wantTakeover(t, a.res, dst, streams, "")
	if l := dst.line("RESUMED", childTimeout); field(l, "imported") != strconv.Itoa(dst.imported) {
		t.Fatalf("target reports %q, want all %d imported connections carrying on", l, dst.imported)
	}
	f.checkStreamsCarriedOn(t)
}

// testTargetEMFILE gives the target too few descriptors for what it
// receives. The target fails with batches still queued for it, and the
// agent and the source must both learn the real reason, not a lost
// target: the attempt is repeated because a lost reason was a race that
// one attempt often won.
func testTargetEMFILE(t *testing.T) {
	const attempts = 6
	f := setupSource(t, 300)
	for i := range attempts {
		dst := startStreamer(t, f.ta.socket, true, "NOFILE=64")
		ds := f.ta.join(t, dst.pid)
		res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, faultMigrateTimeout, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("attempt %d of %d", i+1, attempts)
		wantFailed(t, res, wire.CodeImport)
		wantAborted(t, dst)
	}
	f.checkSourceResumed(t)
}

// testDeadline lets the deadline pass while the target is stuck
// after receiving everything.
func testDeadline(t *testing.T) {
	f := setupSource(t, 100)
	dst := startStreamer(t, f.ta.socket, true, "STALL_AT=end:2s")
	ds := f.ta.join(t, dst.pid)
	res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantFailed(t, res, wire.CodeDeadline)
	f.checkSourceResumed(t)
	// Once unstuck, the target learns the source called it off and drops
	// everything.
	wantAborted(t, dst)
}

// testSourceStoppedAfterExport stops the source (SIGSTOP) right after it
// exported everything: the target's Ready must give up by the deadline
// and drop what it holds, and the source, once continued, must find the
// pair closed and serve on.
func testSourceStoppedAfterExport(t *testing.T) {
	f := setupSource(t, 100, "STOP_AT=exported")
	dst := startStreamer(t, f.ta.socket, true)
	ds := f.ta.join(t, dst.pid)
	res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantFailed(t, res, wire.CodeDeadline)
	wantAborted(t, dst)
	if err := syscall.Kill(f.src.pid, syscall.SIGCONT); err != nil {
		t.Fatalf("continue the source: %v", err)
	}
	f.checkSourceResumed(t)
}

// testSourceStoppedAfterCommit stops the source (SIGSTOP) between its
// Commit on the pair and its Committed to the agent. The target serves,
// so the migration is Completed although the source never said so, even
// once the deadline has passed; continued, the source lets go and exits.
func testSourceStoppedAfterCommit(t *testing.T) {
	const streams = 100
	f := setupSource(t, streams, "STOP_AT=commit-sent")
	dst := startStreamer(t, f.ta.socket, true)
	ds := f.ta.join(t, dst.pid)
	res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantTakeover(t, res, dst, streams, "the target serves")
	if l := dst.line("RESUMED", childTimeout); field(l, "imported") != strconv.Itoa(dst.imported) {
		t.Fatalf("target reports %q, want all %d imported connections carrying on", l, dst.imported)
	}
	// The streams carry on from the target while the source is stopped.
	f.load.advance(t)
	if err := syscall.Kill(f.src.pid, syscall.SIGCONT); err != nil {
		t.Fatalf("continue the source: %v", err)
	}
	if l, code := f.src.waitExit(t); l != "EXIT ok" || code != 0 {
		t.Fatalf("source ended with %q, status %d; want it to let go and exit", l, code)
	}
	f.checkStreamsCarriedOn(t)
}

// testSourceClosedAfterExport sends SIGTERM to the source after it
// exported everything, while the target is held before its Ready: the
// streamer shuts down and closes its session, as a container does when
// kubelet stops it. Its copies go with it, so it must let the target take
// over rather than call the handoff off and drop every client.
func testSourceClosedAfterExport(t *testing.T) {
	const streams = 100
	f := setupSource(t, streams)
	gate := filepath.Join(t.TempDir(), "go-ahead")
	dst := startStreamer(t, f.ta.socket, true, "HOLD_AT=before-ready:"+gate)
	ds := f.ta.join(t, dst.pid)
	exported := make(chan struct{})
	var once sync.Once
	type answer struct {
		res admin.Result
		err error
	}
	done := make(chan answer, 1)
	go func() {
		res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, faultMigrateTimeout, func(phase, msg string) {
			if strings.Contains(msg, "waiting for the target") {
				once.Do(func() { close(exported) })
			}
		})
		done <- answer{res, err}
	}()
	select {
	case <-exported:
	case a := <-done:
		t.Fatalf("migration ended before the source exported everything: %+v, %v", a.res, a.err)
	case <-time.After(childTimeout):
		t.Fatal("the agent never reported the source's Exported")
	}
	if err := syscall.Kill(f.src.pid, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM the source: %v", err)
	}
	if l, code := f.src.waitExit(t); code != 0 || l != "EXIT ok" {
		t.Fatalf("source ended with %q, status %d; want a clean exit", l, code)
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a := <-done
	if a.err != nil {
		t.Fatal(a.err)
	}
	wantTakeover(t, a.res, dst, streams, "from a source that shut down")
	f.checkStreamsCarriedOn(t)
}

// TestBackAndForth50 migrates a live streamer under load 50 times, each
// time to a fresh standby process.
func TestBackAndForth50(t *testing.T) {
	const n = 50
	ta := startAgent(t)
	cur := startStreamer(t, ta.socket, false)
	curSes := ta.join(t, cur.pid)
	ld := startLoad(t, cur.addr, 200)
	ld.startShort(t, cur.addr, 50)
	ld.waitShort(t, 1)
	next := startStreamer(t, ta.socket, true)
	nextSes := ta.join(t, next.pid)

	start := time.Now()
	pauses := make([]time.Duration, 0, n)
	for i := range n {
		// Boot the standby for the next round while this one migrates.
		var after *streamer
		if i < n-1 {
			after = startStreamer(t, ta.socket, true)
		}
		res, err := ta.Migrate(curSes.ID, nextSes.ID, wire.MoveAll, faultMigrateTimeout, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Phase != nodeagent.PhaseCompleted {
			t.Fatalf("migration %d: %s: %s: %s", i+1, res.Phase, res.Reason, res.Message)
		}
		pauses = append(pauses, res.Pause())
		next.waitReady(t)
		// Every imported connection carries on in the target.
		if l := next.line("RESUMED", childTimeout); field(l, "imported") != strconv.Itoa(next.imported) {
			t.Fatalf("migration %d: target reports %q after importing %d connections", i+1, l, next.imported)
		}
		if next.addr != cur.addr {
			t.Fatalf("migration %d: the target serves %s, the source served %s", i+1, next.addr, cur.addr)
		}
		if l, code := cur.waitExit(t); l != "EXIT ok" || code != 0 {
			t.Fatalf("migration %d: source ended with %q, status %d", i+1, l, code)
		}
		ld.advance(t)
		cur, curSes = next, nextSes
		if after != nil {
			next, nextSes = after, ta.join(t, after.pid)
		}
	}
	elapsed := time.Since(start)
	ld.stopShort(t)
	ld.advance(t)
	st := ld.long.Stop()
	if f := st.Failures(); len(f) > 0 || st.Alive != st.Streams {
		t.Fatalf("client: %s\n%s", st, strings.Join(f, "\n"))
	}
	slices.Sort(pauses)
	t.Logf("%d migrations of 200 streams in %v: pause median %v, max %v; client: %s",
		n, elapsed.Round(time.Millisecond), pauses[n/2], pauses[n-1], st)
}
