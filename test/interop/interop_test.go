// Package interop proves the Python SDK (sdk/python) against the Go agent
// and the Go streamer: real processes, real sockets, verifying clients.
// The agent and the Go streamer are built from this module; the Python
// streamer is examples/pystreamer run by python3, which must be installed
// (Python 3.11 or newer): without it these tests fail, they do not skip.
package interop

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
	"github.com/handoff-dev/handoff/internal/fdlimit"
	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/nodeagent/podid"
	"github.com/handoff-dev/handoff/test/support/harness"
)

// bound is how long any wait may take before it counts as a hang.
const bound = 60 * time.Second

var (
	bin  string // nodeagent, streamer, and the pystreamer wrapper
	root string // the repository
)

// TestMain builds the agent and the Go streamer, and checks python3.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	_, file, _, _ := runtime.Caller(0)
	root = filepath.Join(filepath.Dir(file), "..", "..")
	if err := checkPython(); err != nil {
		fmt.Fprintf(os.Stderr, "test/interop: %v\n", err)
		return 1
	}
	if _, _, err := fdlimit.Raise(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	dir, err := os.MkdirTemp("", "handoff-interop-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/handoff-dev/handoff/cmd/nodeagent", "github.com/handoff-dev/handoff/examples/streamer")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "test/interop: build the agent and the streamer: %v\n", err)
		return 1
	}
	for name, script := range map[string]string{
		"pystreamer": filepath.Join(root, "examples", "pystreamer", "pystreamer.py"),
		"aio_blob":   filepath.Join(root, "sdk", "python", "examples", "aio_blob.py"),
		"udp_echo":   filepath.Join(root, "sdk", "python", "examples", "udp_echo.py"),
	} {
		sh := "#!/bin/sh\nexec python3 -u " + script + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(sh), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	bin = dir
	return m.Run()
}

// checkPython fails unless python3 is 3.11 or newer: the package needs
// socket.send_fds, os.memfd_create and fcntl's seals.
func checkPython() error {
	out, err := exec.Command("python3", "-c", "import sys; print(sys.version_info >= (3, 11))").CombinedOutput()
	if err != nil {
		return fmt.Errorf("these tests need python3 (3.11 or newer; Debian: apt-get install python3): %v: %s", err, out)
	}
	if strings.TrimSpace(string(out)) != "True" {
		v, _ := exec.Command("python3", "--version").CombinedOutput()
		return fmt.Errorf("these tests need python3 3.11 or newer, found %s", strings.TrimSpace(string(v)))
	}
	return nil
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// logWatch passes the processes' stderr on to the test log and lets a
// test wait for a line (harness.Env writes one line per Write).
type logWatch struct {
	next    io.Writer
	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced at every line
}

func watchLog(env *harness.Env) *logWatch {
	w := &logWatch{next: env.Log, changed: make(chan struct{})}
	env.Log = w
	return w
}

func (w *logWatch) Write(b []byte) (int, error) {
	w.mu.Lock()
	w.lines = append(w.lines, string(b))
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
	return w.next.Write(b)
}

// wait returns once a line holding every one of subs was written (before
// the call or within bound), and fails the test otherwise.
func (w *logWatch) wait(t *testing.T, subs ...string) {
	t.Helper()
	deadline := time.After(bound)
	seen := 0
	for {
		w.mu.Lock()
		lines, changed := w.lines[seen:], w.changed
		seen = len(w.lines)
		w.mu.Unlock()
	lines:
		for _, l := range lines {
			for _, s := range subs {
				if !strings.Contains(l, s) {
					continue lines
				}
			}
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no log line with %q within %v", subs, bound)
		}
	}
}

func newEnv(t *testing.T) *harness.Env {
	t.Helper()
	// A short directory: a unix socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "hoi-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	env := &harness.Env{Bin: bin, Dir: dir, Log: logWriter{t}}
	if err := env.Init(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	return env
}

// startAgent runs the agent binary.
func startAgent(t *testing.T, env *harness.Env) {
	t.Helper()
	if _, err := env.StartAgent(); err != nil {
		t.Fatal(err)
	}
}

// startAgentInProcess runs the agent's package in this process, for the
// hooks its binary does not expose (Config.Predecessor).
func startAgentInProcess(t *testing.T, env *harness.Env, configure func(*nodeagent.Config)) {
	t.Helper()
	cfg := nodeagent.Config{Socket: env.Socket(), Log: testr.New(t)}
	configure(&cfg)
	a := nodeagent.New(cfg)
	if err := a.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Serve(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// Rates low enough that a Python process serves a thousand streams on a
// shared core.
const (
	rate = 1024
	tick = 200 * time.Millisecond
)

// goStreamer starts the Go streamer; a standby one returns at once.
func goStreamer(t *testing.T, env *harness.Env, label, addr string, standby bool, extra ...string) *harness.Proc {
	t.Helper()
	args := []string{"--addr", addr, "--socket", env.Socket(), "--rate", strconv.Itoa(rate), "--tick", tick.String()}
	if standby {
		args = append(args, "--standby", "--standby-timeout", "2m")
	}
	p, err := env.Start(label, "streamer", append(args, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	if !standby {
		if err := p.WaitServing(bound); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// pyStreamer starts examples/pystreamer; a standby one (or one given
// --warmup) returns at once.
func pyStreamer(t *testing.T, env *harness.Env, label, addr string, standby bool, extra ...string) *harness.Proc {
	t.Helper()
	args := []string{"--addr", addr, "--socket", env.Socket(), "--rate", strconv.Itoa(rate), "--tick", strconv.FormatFloat(tick.Seconds(), 'f', -1, 64)}
	if standby {
		args = append(args, "--standby", "--standby-timeout", "120")
	}
	p, err := env.Start(label, "pystreamer", append(args, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// freeAddr is a loopback address with a port nobody listens on now. Every
// streamer of a test is given it: a listener is inherited only by a
// Listen with the same network and address strings (a source started on
// port 0 hands over the key "tcp|127.0.0.1:0").
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func addrOf(p *harness.Proc) string {
	f := strings.Fields(p.ServingLine)
	for i, w := range f {
		if w == "on" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// imported is the "imported N connections" of a serving line.
func imported(p *harness.Proc) int {
	var n int
	if i := strings.Index(p.ServingLine, "imported "); i >= 0 {
		fmt.Sscanf(p.ServingLine[i:], "imported %d", &n)
	}
	return n
}

func startClients(t *testing.T, addr string, n int, shortRate float64) *loadclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	c, err := loadclient.Start(ctx, loadclient.Config{Addr: addr, Streams: n, NewConnRate: shortRate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	if err := c.WaitAdvanced(ctx, c.Mark(), 1); err != nil {
		t.Fatal(err)
	}
	return c
}

// checkClients waits until every stream advanced by at least a chunk
// more and checks that nothing was lost, duplicated, reset or closed.
func checkClients(t *testing.T, c *loadclient.Client, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := c.WaitAdvanced(ctx, c.Mark(), 2*rate*int64(tick)/int64(time.Second)); err != nil {
		t.Fatalf("streams did not keep flowing: %v (%v)", err, c.Snapshot())
	}
	st := c.Snapshot()
	if f := st.Failures(); len(f) > 0 || st.Alive != n || st.Resets != 0 {
		t.Fatalf("clients: %d/%d alive, failures: %v", st.Alive, n, f)
	}
	t.Logf("clients: %v", st)
}

func adminClient(t *testing.T, env *harness.Env) *admin.Client {
	t.Helper()
	a, err := env.Admin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func session(t *testing.T, a *admin.Client, p *harness.Proc) admin.Session {
	t.Helper()
	s, err := a.WaitSession(int32(p.Pid()), bound)
	if err != nil {
		t.Fatalf("%s did not join the agent: %v", p.Name, err)
	}
	return s
}

// migrate runs a migration from src to dst. onTransferring, if set, runs
// once the source has exported everything (the agent's "waiting for the
// target" progress), while the target holds the sockets before Ready.
func migrate(t *testing.T, a *admin.Client, src, dst admin.Session, onTransferring func()) *admin.Result {
	t.Helper()
	var once sync.Once
	res, err := a.Migrate(admin.Request{From: src.ID, To: dst.ID, TimeoutMS: 20000}, func(p admin.Progress) {
		t.Logf("progress: %s %s", p.Phase, p.Message)
		if onTransferring != nil && strings.Contains(p.Message, "waiting for the target") {
			once.Do(onTransferring)
		}
	})
	if err != nil {
		t.Fatalf("migrate %d → %d: %v", src.ID, dst.ID, err)
	}
	t.Logf("migrate %d → %d: %s %s %s: %d listeners, %d connections in %d batches, %d state bytes, pause %v",
		src.ID, dst.ID, res.Phase, res.Reason, res.Message, res.Listeners, res.Connections, res.Batches, res.StateBytes, res.Pause())
	return res
}

func wantCompleted(t *testing.T, res *admin.Result, streams int) {
	t.Helper()
	if res.Phase != "Completed" || res.Listeners != 1 || res.Connections < streams {
		t.Fatalf("migration %s (%s: %s) with %d listeners and %d connections; want Completed with 1 and at least %d",
			res.Phase, res.Reason, res.Message, res.Listeners, res.Connections, streams)
	}
}

func wantFailed(t *testing.T, res *admin.Result, reason string) {
	t.Helper()
	if res.Phase != "Failed" || res.Reason != reason {
		t.Fatalf("migration %s (%s: %s); want Failed with reason %s", res.Phase, res.Reason, res.Message, reason)
	}
}

// wantTakeover waits for a target to serve what it inherited.
func wantTakeover(t *testing.T, p *harness.Proc, streams int) {
	t.Helper()
	if err := p.WaitServing(bound); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.ServingLine, "inherited=true") || imported(p) < streams {
		t.Fatalf("%s did not take the sockets over: %s", p.Name, p.ServingLine)
	}
}

// wantMovedAway waits for a source to exit after its sockets moved.
func wantMovedAway(t *testing.T, p *harness.Proc) {
	t.Helper()
	if _, err := p.Line("moved away", bound); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(bound); err != nil {
		t.Fatalf("%s after moving away: %v", p.Name, err)
	}
}

func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("count descriptors of %d: %v", pid, err)
	}
	return len(ents)
}

// waitFDCount polls /proc until pid has exactly want descriptors (a
// bounded condition wait, not a synchronisation by sleeping).
func waitFDCount(t *testing.T, pid, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := fdCount(t, pid)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d has %d descriptors, want %d as before the migration", pid, got, want)
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a bounded condition wait
	}
}

// TestGoToPythonToGo: a Go streamer's listener and streams go to a Python
// streamer, then on to a Go streamer, under verifying clients with short
// connections coming and going: every stream kept, every byte verified,
// no reset.
func TestGoToPythonToGo(t *testing.T) {
	env := newEnv(t)
	startAgent(t, env)
	a := adminClient(t, env)
	addr := freeAddr(t)
	goSrc := goStreamer(t, env, "go-1", addr, false)
	const n = 200
	clients := startClients(t, addr, n, 20)

	py := pyStreamer(t, env, "py", addr, true)
	wantCompleted(t, migrate(t, a, session(t, a, goSrc), session(t, a, py), nil), n)
	wantTakeover(t, py, n)
	wantMovedAway(t, goSrc)
	checkClients(t, clients, n)

	goDst := goStreamer(t, env, "go-2", addr, true)
	wantCompleted(t, migrate(t, a, session(t, a, py), session(t, a, goDst), nil), n)
	wantTakeover(t, goDst, n)
	wantMovedAway(t, py)
	checkClients(t, clients, n)
}

// TestPythonAsksTheAgent: a Python process started without --standby asks
// the agent (HelloAsk) and is told to wait (WelcomeStandby), so it
// receives the Go streamer's sockets; a second one told to wait, to which
// nothing comes, joins again after its standby timeout and serves fresh
// sockets, as the Go SDK does.
func TestPythonAsksTheAgent(t *testing.T) {
	env := newEnv(t)
	var mu sync.Mutex
	asked := 0
	startAgentInProcess(t, env, func(c *nodeagent.Config) {
		c.Predecessor = func(podid.Identity) (bool, string) {
			mu.Lock()
			defer mu.Unlock()
			asked++
			return asked > 1, "test: every process after the first has a predecessor"
		}
	})
	a := adminClient(t, env)
	addr := freeAddr(t)
	goSrc := goStreamer(t, env, "go", addr, false)
	const n = 50
	clients := startClients(t, addr, n, 10)

	py := pyStreamer(t, env, "py-asks", addr, false)
	ses := session(t, a, py)
	if !ses.Standby {
		t.Fatalf("the Python process joined as %+v; the agent told it to wait, so it should be in standby", ses)
	}
	wantCompleted(t, migrate(t, a, session(t, a, goSrc), ses, nil), n)
	wantTakeover(t, py, n)
	wantMovedAway(t, goSrc)
	checkClients(t, clients, n)

	late := pyStreamer(t, env, "py-late", "127.0.0.1:0", false, "--standby-timeout", "0.5")
	if err := late.WaitServing(bound); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(late.ServingLine, "inherited=false") {
		t.Fatalf("the process nothing was handed to serves %q; want fresh sockets", late.ServingLine)
	}
	if s := session(t, a, late); s.Standby {
		t.Fatalf("after its standby timeout the process is in session %+v; want a fresh one", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if asked != 3 {
		t.Fatalf("the agent was asked %d times; want 3 (a rejoin after the timeout does not ask)", asked)
	}
}

// TestInPlaceAcrossLanguages: a Go streamer stores its sockets in the
// agent and exits; a Python streamer that starts (without standby) claims
// them; it stores them in turn and a Go streamer claims them back.
func TestInPlaceAcrossLanguages(t *testing.T) {
	env := newEnv(t)
	startAgent(t, env)
	a := adminClient(t, env)
	addr := freeAddr(t)
	old := goStreamer(t, env, "go-old", addr, false)
	const n = 100
	clients := startClients(t, addr, n, 10)

	store := func(p *harness.Proc) {
		t.Helper()
		r, err := a.Do(admin.Request{Op: admin.OpStore, From: session(t, a, p).ID, TimeoutMS: 20000, HoldMS: 60000}, nil)
		if err != nil || r.Result == nil || r.Result.Phase != "Completed" {
			t.Fatalf("store from %s: %v %+v", p.Name, err, r)
		}
		t.Logf("stored %d connections of %s", r.Result.Connections, p.Name)
		wantMovedAway(t, p)
	}
	store(old)
	py := pyStreamer(t, env, "py", addr, false)
	wantTakeover(t, py, n)
	checkClients(t, clients, n)

	store(py)
	back := goStreamer(t, env, "go-new", addr, false)
	if !strings.Contains(back.ServingLine, "inherited=true") || imported(back) < n {
		t.Fatalf("the Go streamer did not claim the Python streamer's stored sockets: %s", back.ServingLine)
	}
	checkClients(t, clients, n)
}

// TestThousandDescriptors moves 1100 streams from Go to Python and back:
// five batches each way.
func TestThousandDescriptors(t *testing.T) {
	env := newEnv(t)
	startAgent(t, env)
	a := adminClient(t, env)
	addr := freeAddr(t)
	goSrc := goStreamer(t, env, "go-1", addr, false)
	const n = 1100
	clients := startClients(t, addr, n, 0)

	py := pyStreamer(t, env, "py", addr, true)
	res := migrate(t, a, session(t, a, goSrc), session(t, a, py), nil)
	wantCompleted(t, res, n)
	if res.Batches < 5 {
		t.Fatalf("%d connections in %d batches; want at least 5", res.Connections, res.Batches)
	}
	wantTakeover(t, py, n)
	wantMovedAway(t, goSrc)
	checkClients(t, clients, n)

	goDst := goStreamer(t, env, "go-2", addr, true)
	res = migrate(t, a, session(t, a, py), session(t, a, goDst), nil)
	wantCompleted(t, res, n)
	if res.Batches < 5 {
		t.Fatalf("%d connections in %d batches; want at least 5", res.Connections, res.Batches)
	}
	wantTakeover(t, goDst, n)
	wantMovedAway(t, py)
	checkClients(t, clients, n)
}

// TestPythonTargetKilled: the Python target is killed (SIGKILL) while it
// holds every descriptor, before Ready. The Go source resumes: no stream
// lost, its descriptors as before, and it can still be migrated.
func TestPythonTargetKilled(t *testing.T) {
	env := newEnv(t)
	startAgent(t, env)
	a := adminClient(t, env)
	addr := freeAddr(t)
	src := goStreamer(t, env, "go", addr, false)
	const n = 100
	clients := startClients(t, addr, n, 0)
	base := fdCount(t, src.Pid())

	victim := pyStreamer(t, env, "py-victim", addr, true, "--warmup", "60")
	res := migrate(t, a, session(t, a, src), session(t, a, victim), func() {
		if _, err := victim.Line("warming up", bound); err != nil {
			t.Error(err)
		}
		victim.Signal(syscall.SIGKILL)
	})
	wantFailed(t, res, "TargetLost")
	waitFDCount(t, src.Pid(), base)
	checkClients(t, clients, n)

	py := pyStreamer(t, env, "py", addr, true)
	wantCompleted(t, migrate(t, a, session(t, a, src), session(t, a, py), nil), n)
	wantTakeover(t, py, n)
	checkClients(t, clients, n)
}

// TestGoTargetKilledPythonSource: the Python process is the source and the
// Go target is killed before Ready. The Python source resumes every stream,
// its descriptors as before, and can still be migrated.
func TestGoTargetKilledPythonSource(t *testing.T) {
	env := newEnv(t)
	startAgent(t, env)
	a := adminClient(t, env)
	addr := freeAddr(t)
	src := pyStreamer(t, env, "py", addr, false)
	if err := src.WaitServing(bound); err != nil {
		t.Fatal(err)
	}
	const n = 100
	clients := startClients(t, addr, n, 0)
	base := fdCount(t, src.Pid())

	victim := goStreamer(t, env, "go-victim", addr, true, "--warmup", "60s")
	res := migrate(t, a, session(t, a, src), session(t, a, victim), func() {
		victim.Signal(syscall.SIGKILL)
	})
	wantFailed(t, res, "TargetLost")
	waitFDCount(t, src.Pid(), base)
	checkClients(t, clients, n)

	dst := goStreamer(t, env, "go", addr, true)
	wantCompleted(t, migrate(t, a, session(t, a, src), session(t, a, dst), nil), n)
	wantTakeover(t, dst, n)
	wantMovedAway(t, src)
	checkClients(t, clients, n)
}

// TestPythonTargetEMFILE: the Python target's descriptor limit is too low
// for what it is sent (MSG_CTRUNC): it aborts with ImportFailed and the Go
// source resumes.
func TestPythonTargetEMFILE(t *testing.T) {
	env := newEnv(t)
	startAgent(t, env)
	a := adminClient(t, env)
	addr := freeAddr(t)
	src := goStreamer(t, env, "go", addr, false)
	const n = 200
	clients := startClients(t, addr, n, 0)
	base := fdCount(t, src.Pid())

	py := pyStreamer(t, env, "py-64", addr, true, "--nofile", "64")
	res := migrate(t, a, session(t, a, src), session(t, a, py), nil)
	wantFailed(t, res, "ImportFailed")
	if !strings.Contains(res.Message, "target: ") {
		t.Errorf("the failure does not carry the target's reason: %s", res.Message)
	}
	if err := py.Wait(bound); err == nil {
		t.Fatal("the Python target exited 0 after its import failed")
	}
	waitFDCount(t, src.Pid(), base)
	checkClients(t, clients, n)
}

// blob is aio_blob's state for a connection of size bytes: byte i is i % 251.
func blob(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// TestAsyncioBigState: connections of an asyncio server
// (sdk/python/examples/aio_blob.py, on handoff.aio) carry 4 MiB of state
// each, so the batch's states travel in a memfd, from a Python source to a
// Python target through the Go agent; each connection's state arrives whole
// and the connection carries on in the new process.
func TestAsyncioBigState(t *testing.T) {
	env := newEnv(t)
	startAgent(t, env)
	a := adminClient(t, env)
	addr := freeAddr(t)
	start := func(label string, standby bool) *harness.Proc {
		args := []string{"--addr", addr, "--socket", env.Socket()}
		if standby {
			args = append(args, "--standby")
		}
		p, err := env.Start(label, "aio_blob", args...)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	src := start("aio-1", false)
	if err := src.WaitServing(bound); err != nil {
		t.Fatal(err)
	}
	const conns, size = 3, 4 << 20
	sum := sha256.Sum256(blob(size))
	digest := hex.EncodeToString(sum[:])
	type client struct {
		c net.Conn
		r *bufio.Reader
	}
	ask := func(cl client, req string) string {
		t.Helper()
		cl.c.SetDeadline(time.Now().Add(bound))
		if _, err := cl.c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		l, err := cl.r.ReadString('\n')
		if err != nil {
			t.Fatalf("ask %q: %v", req, err)
		}
		return strings.TrimSpace(l)
	}
	var cls []client
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cl := client{c, bufio.NewReader(c)}
		if got, want := ask(cl, fmt.Sprintf("%d\n", size)), fmt.Sprintf("HELD %d", src.Pid()); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
		cls = append(cls, cl)
	}
	dst := start("aio-2", true)
	res := migrate(t, a, session(t, a, src), session(t, a, dst), nil)
	wantCompleted(t, res, conns)
	if res.StateBytes < conns*size || res.Batches != 1 {
		t.Fatalf("%d state bytes in %d batches; want at least %d in one (a memfd)", res.StateBytes, res.Batches, conns*size)
	}
	wantTakeover(t, dst, conns)
	if _, err := src.Line("moved away", bound); err != nil {
		t.Fatal(err)
	}
	for _, cl := range cls {
		if got, want := ask(cl, "?\n"), fmt.Sprintf("OK %d %s %d", size, digest, dst.Pid()); got != want {
			t.Fatalf("after the migration got %q, want %q", got, want)
		}
	}
}

// TestPythonPacketSocket: a UDP socket (listen_packet) moves from one
// Python process to another: the answer to a datagram sent after the
// migration comes from the new process, on the same port.
func TestPythonPacketSocket(t *testing.T) {
	env := newEnv(t)
	startAgent(t, env)
	a := adminClient(t, env)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	start := func(label string, standby bool) *harness.Proc {
		args := []string{"--addr", addr, "--socket", env.Socket()}
		if standby {
			args = append(args, "--standby")
		}
		p, err := env.Start(label, "udp_echo", args...)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	src := start("udp-1", false)
	if err := src.WaitServing(bound); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func(msg string, pid int) {
		t.Helper()
		c.SetDeadline(time.Now().Add(bound))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 256)
		n, err := c.Read(b)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := string(b[:n]), fmt.Sprintf("%d %s", pid, msg); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	echo("before", src.Pid())
	dst := start("udp-2", true)
	res := migrate(t, a, session(t, a, src), session(t, a, dst), nil)
	if res.Phase != "Completed" || res.Packets != 1 {
		t.Fatalf("migration %s (%s: %s) with %d packet sockets; want Completed with 1", res.Phase, res.Reason, res.Message, res.Packets)
	}
	if err := dst.WaitServing(bound); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dst.ServingLine, "inherited=true") {
		t.Fatalf("the new process did not inherit the socket: %s", dst.ServingLine)
	}
	wantMovedAway(t, src)
	echo("after", dst.Pid())
}

// TestPythonRejoinsRestartedAgent: the agent is killed and started again
// while a Python streamer serves; the streamer serves on, joins the new
// agent by itself, and can then be migrated to a Go streamer.
func TestPythonRejoinsRestartedAgent(t *testing.T) {
	env := newEnv(t)
	agent, err := env.StartAgent()
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	py := pyStreamer(t, env, "py", addr, false)
	if err := py.WaitServing(bound); err != nil {
		t.Fatal(err)
	}
	const n = 50
	clients := startClients(t, addr, n, 10)
	for i := range 2 {
		agent.Signal(syscall.SIGKILL)
		if err := agent.Wait(bound); err == nil {
			t.Fatal("the agent exited 0 after SIGKILL")
		}
		checkClients(t, clients, n) // serving on without an agent
		if agent, err = env.StartAgent(); err != nil {
			t.Fatalf("restart %d: %v", i+1, err)
		}
	}
	a := adminClient(t, env)
	ses := session(t, a, py) // waits until it has joined the new agent
	dst := goStreamer(t, env, "go", addr, true)
	wantCompleted(t, migrate(t, a, ses, session(t, a, dst), nil), n)
	wantTakeover(t, dst, n)
	wantMovedAway(t, py)
	checkClients(t, clients, n)
}

// TestPythonStandbyRejoins: a Python streamer waiting in standby loses the
// agent (SIGKILL) before anything began; it joins the restarted agent in
// standby by itself, and a migration from a Go streamer to it then
// completes under verifying clients, with neither streamer restarted:
// every stream kept, every byte verified (the Go SDK's TestStandbyRejoins).
func TestPythonStandbyRejoins(t *testing.T) {
	env := newEnv(t)
	logs := watchLog(env)
	agent, err := env.StartAgent()
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	src := goStreamer(t, env, "go", addr, false)
	const n = 50
	clients := startClients(t, addr, n, 10)
	py := pyStreamer(t, env, "py", addr, true)
	if s := session(t, adminClient(t, env), py); !s.Standby {
		t.Fatalf("the Python process joined as %+v, want standby", s)
	}
	// The agent lists a session just before its Welcome goes out, and logs
	// "session joined" just after: killing it in between would fail the
	// first join, not a process waiting in standby.
	logs.wait(t, "agent: ", `"msg":"session joined"`, fmt.Sprintf(`"pid":%d,`, py.Pid()))

	agent.Signal(syscall.SIGKILL)
	if err := agent.Wait(bound); err == nil {
		t.Fatal("the agent exited 0 after SIGKILL")
	}
	if _, err = env.StartAgent(); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	a := adminClient(t, env)
	ss := session(t, a, src)
	ds, err := a.WaitSession(int32(py.Pid()), bound)
	if err != nil {
		if py.Exited() {
			t.Fatalf("the standby Python process exited instead of joining the new agent (%v)", py.Wait(bound))
		}
		t.Fatalf("the standby Python process did not join the new agent: %v", err)
	}
	if !ds.Standby {
		t.Fatalf("the standby Python process joined the new agent as %+v, want standby", ds)
	}
	t.Logf("both joined the new agent within %v of it listening", time.Since(up).Round(time.Millisecond))
	wantCompleted(t, migrate(t, a, ss, ds, nil), n)
	wantTakeover(t, py, n)
	wantMovedAway(t, src)
	checkClients(t, clients, n)
}
