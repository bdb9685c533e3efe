package handoff_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/go-logr/logr/testr"

	"github.com/handoff-dev/handoff/examples/streamer/server"
	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/test/support/childproc"
	"github.com/handoff-dev/handoff/test/support/testapp"
)

// Child processes are this test binary re-executed with HANDOFF_TEST_CHILD
// naming what to run, as tableflip's tests do.
func TestMain(m *testing.M) {
	if role := os.Getenv("HANDOFF_TEST_CHILD"); role != "" {
		os.Exit(runChild(role))
	}
	os.Exit(m.Run())
}

func runChild(role string) int {
	switch role {
	case "testapp":
		size := 64
		if s := os.Getenv("STATE_SIZE"); s != "" {
			size, _ = strconv.Atoi(s)
		}
		applyChildFaults()
		err := testapp.Run(context.Background(), testapp.Config{
			Socket: os.Getenv("HANDOFF_SOCKET"), Name: os.Getenv("HANDOFF_NAME"),
			Standby: os.Getenv("STANDBY") == "1",
			TCP:     os.Getenv("TCP"), Unix: os.Getenv("UNIX"), UDP: os.Getenv("UDP"),
			StateSize: func(id uint64) int {
				if os.Getenv("STATE_VARY") == "1" {
					return int(id % uint64(size+1))
				}
				return size
			},
			HoldFreeze: envUint(os.Getenv("HOLD_FREEZE_ID")),
			HoldUntil:  int(envUint(os.Getenv("HOLD_UNTIL"))),
			Ready: func(tcp, unix, udp net.Addr, imported int) {
				fmt.Printf("READY tcp=%v unix=%v udp=%v imported=%d pid=%d\n", tcp, unix, udp, imported, os.Getpid())
			},
			Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
		})
		if err != nil {
			fmt.Printf("EXIT err=%v\n", err)
			return 3
		}
		fmt.Println("EXIT ok")
		return 0
	case "streamer":
		return runStreamerChild()
	case "agent":
		return runAgentChild()
	}
	fmt.Fprintf(os.Stderr, "unknown child role %q\n", role)
	return 2
}

// envUint is a decimal environment value, 0 if unset or not a number.
func envUint(s string) uint64 {
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}

// runStreamerChild runs the example streaming server, configured from the
// environment: ADDR, HANDOFF_SOCKET, HANDOFF_NAME, STANDBY=1. It prints
// "READY addr=… pid=… inherited=… imported=…" once serving, after a
// handoff "RESUMED imported=… after=…" once every imported connection
// carries on, and "EXIT ok" or "EXIT err=…" when Run returns.
func runStreamerChild() int {
	applyChildFaults()
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	// SIGTERM shuts the streamer down as in a pod; faults tests send it
	// mid-handoff.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err := server.Run(ctx, server.Config{
		Addr: addr, Rate: 4096, Tick: 50 * time.Millisecond,
		Socket: os.Getenv("HANDOFF_SOCKET"), SessionName: os.Getenv("HANDOFF_NAME"),
		Standby: os.Getenv("STANDBY") == "1", StandbyTimeout: envDuration("STANDBY_TIMEOUT"),
		Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
		OnReady: func(i server.Info) {
			fmt.Printf("READY addr=%v pid=%d inherited=%v imported=%d\n", i.Addr, os.Getpid(), i.Inherited, i.Imported)
		},
		OnResumed: func(n int, d time.Duration) {
			fmt.Printf("RESUMED imported=%d after=%v\n", n, d)
		},
	})
	if err != nil {
		fmt.Printf("EXIT err=%v\n", err)
		return 3
	}
	fmt.Println("EXIT ok")
	return 0
}

// envDuration parses the environment variable k as a duration (0 if unset).
func envDuration(k string) time.Duration {
	d, _ := time.ParseDuration(os.Getenv(k))
	return d
}

// runAgentChild runs a node agent on $HANDOFF_SOCKET that kills itself
// with SIGKILL at the transaction step named by AGENT_CRASH_AT. It prints
// "READY pid=…" once listening.
func runAgentChild() int {
	crashAt := os.Getenv("AGENT_CRASH_AT")
	a := nodeagent.New(nodeagent.Config{
		Socket:  os.Getenv("HANDOFF_SOCKET"),
		Systemd: nodeagent.SystemdFromEnv(), // nil unless a test plays systemd
		Log: funcr.New(func(prefix, args string) {
			fmt.Fprintln(os.Stderr, prefix, args)
		}, funcr.Options{}),
		Fault: func(step string) {
			if step == crashAt {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		},
	})
	if err := a.Listen(); err != nil {
		fmt.Printf("EXIT err=%v\n", err)
		return 3
	}
	fmt.Printf("READY pid=%d\n", os.Getpid())
	// SIGTERM stops it as it stops the agent binary (systemctl stop).
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := a.Serve(ctx); err != nil {
		fmt.Printf("EXIT err=%v\n", err)
		return 3
	}
	fmt.Println("EXIT ok")
	return 0
}

// child is a re-executed test binary.
type child struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan string
	out   strings.Builder
	mu    sync.Mutex
	done  chan struct{} // closed once the process was reaped
	err   error         // cmd.Wait's answer, set before done is closed
}

// wait waits for the process to exit and returns how it ended.
func (c *child) wait(timeout time.Duration) error {
	c.t.Helper()
	select {
	case <-c.done:
		return c.err
	case <-time.After(timeout):
		c.t.Fatalf("child %d did not exit within %v", c.cmd.Process.Pid, timeout)
		return nil
	}
}

func startChild(t *testing.T, role string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_CHILD="+role)
	cmd.Env = append(cmd.Env, env...)
	return startCmd(t, role, cmd)
}

// startCmd starts cmd as a child whose stdout lines the test reads and
// whose stderr goes to the test log.
func startCmd(t *testing.T, role string, cmd *exec.Cmd) *child {
	t.Helper()
	cmd.Stderr = &childproc.LogWriter{T: t, Prefix: role}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child %s: %v", role, err)
	}
	c := &child{t: t, cmd: cmd, lines: make(chan string, 16), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		// Reap it, so that its stderr is not logged after the test ended.
		for range c.lines {
		}
		<-c.done
	})
	return c
}

// line waits for the next line the child prints that starts with prefix.
func (c *child) line(prefix string, timeout time.Duration) string {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("child exited before printing %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			c.t.Fatalf("child printed no %q within %v", prefix, timeout)
		}
	}
}

// field extracts key=value from a child's line.
var field = childproc.Field

// testAgent runs an agent in this process on a temporary socket and
// reports joins and results on channels.
type testAgent struct {
	*nodeagent.Agent
	socket  string
	joins   chan admin.Session
	results chan admin.Result
}

func startAgent(t *testing.T, configure ...func(*nodeagent.Config)) *testAgent {
	t.Helper()
	dir := t.TempDir()
	ta := &testAgent{socket: filepath.Join(dir, "run", "agent.sock"), joins: make(chan admin.Session, 64), results: make(chan admin.Result, 64)}
	cfg := nodeagent.Config{
		Socket: ta.socket, Log: testr.New(t),
		OnJoin:   func(s admin.Session) { ta.joins <- s },
		OnResult: func(r admin.Result) { ta.results <- r },
	}
	for _, f := range configure {
		f(&cfg)
	}
	ta.Agent = nodeagent.New(cfg)
	if err := ta.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ta.Serve(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ta
}

// join waits until the process pid has joined and returns its session.
func (ta *testAgent) join(t *testing.T, pid int) admin.Session {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case s := <-ta.joins:
			if int(s.PID) == pid {
				return s
			}
		case <-deadline:
			t.Fatalf("process %d did not join the agent", pid)
		}
	}
}

// fdCount counts a process's open descriptors.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("count descriptors of %d: %v", pid, err)
	}
	return len(ents)
}

var _ = io.EOF
var _ = syscall.SIGKILL
