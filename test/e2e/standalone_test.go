// Package e2e runs the built binaries the way a user does: the agent in
// standalone mode, the example streamer, handoffctl, and verifying clients
// on this host.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
	"github.com/handoff-dev/handoff/test/support/harness"
)

var bin string

// TestMain uses the binaries in HANDOFF_BIN (make test-e2e builds them),
// or builds them itself into a temporary directory.
func TestMain(m *testing.M) {
	bin = os.Getenv("HANDOFF_BIN")
	if bin == "" {
		dir, err := os.MkdirTemp("", "handoff-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/handoff-dev/handoff/cmd/...", "github.com/handoff-dev/handoff/examples/streamer")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build binaries: %v\n", err)
			os.Exit(1)
		}
		bin = dir
	}
	os.Exit(m.Run())
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func newEnv(t *testing.T) *harness.Env {
	t.Helper()
	env := &harness.Env{Bin: bin, Dir: t.TempDir(), Log: logWriter{t}}
	if err := env.Init(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	return env
}

// ctl runs handoffctl and returns its stdout.
func ctl(t *testing.T, env *harness.Env, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "handoffctl"), append([]string{"--socket", env.Socket()}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	t.Logf("handoffctl %s:\n%s%s", strings.Join(args, " "), out.String(), errb.String())
	return out.String(), err
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

func startClients(t *testing.T, addr string, n int) *loadclient.Client {
	t.Helper()
	c, err := loadclient.Start(context.Background(), loadclient.Config{Addr: addr, Streams: n, NewConnRate: 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	if err := c.WaitAdvanced(context.Background(), c.Mark(), 1); err != nil {
		t.Fatal(err)
	}
	return c
}

func checkClients(t *testing.T, c *loadclient.Client, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitAdvanced(ctx, c.Mark(), 1024); err != nil {
		t.Fatalf("streams did not keep flowing: %v", err)
	}
	st := c.Snapshot()
	if f := st.Failures(); len(f) > 0 || st.Alive != n {
		t.Fatalf("clients: %d/%d alive, failures: %v", st.Alive, n, f)
	}
	t.Logf("clients: %v", st)
}

// TestCLIMigration migrates a streamer with handoffctl, as an operator on a
// plain host would, and back to a third process.
func TestCLIMigration(t *testing.T) {
	env := newEnv(t)
	if _, err := env.StartAgent(); err != nil {
		t.Fatal(err)
	}
	cur, err := env.StartStreamer(harness.Streamer{Label: "streamer-1", Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	clients := startClients(t, addrOf(cur), n)
	for i := 2; i <= 3; i++ {
		next, err := env.StartStreamer(harness.Streamer{Label: fmt.Sprintf("streamer-%d", i), Addr: "127.0.0.1:0", Standby: true})
		if err != nil {
			t.Fatal(err)
		}
		from, err := ctl(t, env, "wait", "--pid", strconv.Itoa(cur.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		to, err := ctl(t, env, "wait", "--pid", strconv.Itoa(next.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		out, err := ctl(t, env, "sessions")
		if err != nil || !strings.Contains(out, "standby") || !strings.Contains(out, "active") {
			t.Fatalf("sessions should list an active and a standby streamer: %v\n%s", err, out)
		}
		out, err = ctl(t, env, "migrate", "--from", strings.TrimSpace(from), "--to", strings.TrimSpace(to), "--timeout", "30s")
		if err != nil || !strings.HasPrefix(out, "Completed") {
			t.Fatalf("migrate: %v\n%s", err, out)
		}
		if !strings.Contains(out, fmt.Sprintf("%d connections", n)) && !strings.Contains(out, "connections") {
			t.Fatalf("migrate output lacks counts: %s", out)
		}
		if err := next.WaitServing(20 * time.Second); err != nil {
			t.Fatal(err)
		}
		if err := cur.Wait(20 * time.Second); err != nil {
			t.Fatalf("old streamer did not exit cleanly: %v", err)
		}
		checkClients(t, clients, n)
		cur = next
	}
}

// TestInPlaceRestart stores a streamer's sockets in the agent, lets the
// process exit, and starts a new one that claims them: the restart a
// Kubernetes in-place image update needs.
func TestInPlaceRestart(t *testing.T) {
	env := newEnv(t)
	if _, err := env.StartAgent(); err != nil {
		t.Fatal(err)
	}
	old, err := env.StartStreamer(harness.Streamer{Label: "streamer-old", Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	clients := startClients(t, addrOf(old), n)
	id, err := ctl(t, env, "wait", "--pid", strconv.Itoa(old.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	out, err := ctl(t, env, "store", "--from", strings.TrimSpace(id), "--hold", "60s")
	if err != nil || !strings.HasPrefix(out, "Completed") {
		t.Fatalf("store: %v\n%s", err, out)
	}
	if err := old.Wait(20 * time.Second); err != nil {
		t.Fatalf("old streamer: %v", err)
	}
	out, err = ctl(t, env, "sessions")
	if err != nil || !strings.Contains(out, `stored for "streamer"`) {
		t.Fatalf("sessions should show the stored sockets: %v\n%s", err, out)
	}
	// Not in standby: a process that starts while its sockets are stored
	// receives them during Join.
	restarted, err := env.StartStreamer(harness.Streamer{Label: "streamer-new", Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	var imported int
	if i := strings.Index(restarted.ServingLine, "imported "); i >= 0 {
		fmt.Sscanf(restarted.ServingLine[i:], "imported %d", &imported)
	}
	// At least the streams; short connections in flight move too.
	if !strings.Contains(restarted.ServingLine, "inherited=true") || imported < n {
		t.Fatalf("restarted streamer did not take the stored sockets: %s", restarted.ServingLine)
	}
	checkClients(t, clients, n)
}

// TestAgentUpgrade: with a streamer's sockets in the store, a second
// nodeagent binary starts on the same socket; the old one hands over its
// listener and store and exits 0, and a new streamer claims every socket
// from the new agent, every client keeping every byte.
func TestAgentUpgrade(t *testing.T) {
	env := newEnv(t)
	oldAgent, err := env.StartAgent()
	if err != nil {
		t.Fatal(err)
	}
	old, err := env.StartStreamer(harness.Streamer{Label: "streamer-old", Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	clients := startClients(t, addrOf(old), n)
	id, err := ctl(t, env, "wait", "--pid", strconv.Itoa(old.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	out, err := ctl(t, env, "store", "--from", strings.TrimSpace(id), "--hold", "60s")
	if err != nil || !strings.HasPrefix(out, "Completed") {
		t.Fatalf("store: %v\n%s", err, out)
	}
	if err := old.Wait(20 * time.Second); err != nil {
		t.Fatalf("old streamer: %v", err)
	}
	if _, err := env.StartAgent(); err != nil {
		t.Fatalf("new agent: %v", err)
	}
	if err := oldAgent.Wait(20 * time.Second); err != nil {
		t.Fatalf("old agent after handing over: %v", err)
	}
	out, err = ctl(t, env, "sessions")
	if err != nil || !strings.Contains(out, `stored for "streamer"`) {
		t.Fatalf("the new agent should hold the stored sockets: %v\n%s", err, out)
	}
	restarted, err := env.StartStreamer(harness.Streamer{Label: "streamer-new", Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	var imported int
	if i := strings.Index(restarted.ServingLine, "imported "); i >= 0 {
		fmt.Sscanf(restarted.ServingLine[i:], "imported %d", &imported)
	}
	if !strings.Contains(restarted.ServingLine, "inherited=true") || imported < n {
		t.Fatalf("the new streamer did not take the stored sockets from the new agent: %s", restarted.ServingLine)
	}
	checkClients(t, clients, n)
}

// TestMetricsAndHealth checks the agent's /healthz and /readyz and that a migration
// shows in /metrics.
func TestMetricsAndHealth(t *testing.T) {
	env := newEnv(t)
	agent, err := env.StartAgent("--metrics-bind-address", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	line, err := agent.Line("nodeagent: metrics address=", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	maddr := strings.TrimPrefix(line, "nodeagent: metrics address=")
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get("http://" + maddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
		}
		return string(b)
	}
	for _, probe := range []string{"/healthz", "/readyz"} {
		if got := get(probe); strings.TrimSpace(got) != "ok" {
			t.Fatalf("%s = %q", probe, got)
		}
	}
	cur, err := env.StartStreamer(harness.Streamer{Label: "streamer-1", Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	clients := startClients(t, addrOf(cur), 20)
	next, err := env.StartStreamer(harness.Streamer{Label: "streamer-2", Addr: "127.0.0.1:0", Standby: true})
	if err != nil {
		t.Fatal(err)
	}
	from, _ := ctl(t, env, "wait", "--pid", strconv.Itoa(cur.Pid()))
	to, _ := ctl(t, env, "wait", "--pid", strconv.Itoa(next.Pid()))
	if out, err := ctl(t, env, "migrate", "--from", strings.TrimSpace(from), "--to", strings.TrimSpace(to)); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	checkClients(t, clients, 20)
	metrics := get("/metrics")
	want := []string{`handoff_migrations_total{reason="",result="Completed"} 1`, "handoff_pause_seconds_count 1", "handoff_fds_moved_total"}
	sc := bufio.NewScanner(strings.NewReader(metrics))
	found := map[string]bool{}
	for sc.Scan() {
		for _, w := range want {
			if strings.HasPrefix(sc.Text(), w) {
				found[w] = true
			}
		}
	}
	for _, w := range want {
		if !found[w] {
			t.Errorf("/metrics lacks %q", w)
		}
	}
}
