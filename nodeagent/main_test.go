package nodeagent_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/test/support/childproc"
	"github.com/handoff-dev/handoff/test/support/testapp"
	"github.com/handoff-dev/handoff/wire"
)

// Peers other than the test process itself are this test binary
// re-executed with HANDOFF_TEST_CHILD naming what to run: the kernel then
// reports another pid (and, with SysProcAttr.Credential, another uid) for
// them, which is what the agent's identity checks are about.
func TestMain(m *testing.M) {
	if role := os.Getenv("HANDOFF_TEST_CHILD"); role != "" {
		os.Exit(runChild(role))
	}
	code := m.Run()
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	os.Exit(code)
}

func runChild(role string) int {
	socket := os.Getenv("HANDOFF_SOCKET")
	switch role {
	case "app":
		return runAppChild(socket)
	case "idle":
		// A process that only exists, until its stdin closes.
		io.Copy(io.Discard, os.Stdin)
		return 0
	case "admin":
		ac, err := admin.Dial(socket)
		if err != nil {
			var f wire.Failure
			if errors.As(err, &f) {
				fmt.Printf("REFUSED code=%s reason=%q\n", f.Code, f.Reason)
				return 0
			}
			fmt.Printf("FAIL err=%q\n", err.Error())
			return 3
		}
		defer ac.Close()
		r, err := ac.Sessions()
		if err != nil {
			fmt.Printf("FAIL err=%q\n", err.Error())
			return 3
		}
		fmt.Printf("ADMIN sessions=%d\n", len(r.Sessions))
		return 0
	case "testapp":
		err := testapp.Run(context.Background(), testapp.Config{
			Socket: socket, Name: os.Getenv("HANDOFF_NAME"), TCP: "127.0.0.1:0",
			StateSize: func(uint64) int { return 64 },
			Ready: func(tcp, _, _ net.Addr, imported int) {
				fmt.Printf("READY tcp=%v imported=%d pid=%d\n", tcp, imported, os.Getpid())
			},
			Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
		})
		if err != nil {
			fmt.Printf("EXIT err=%q\n", err.Error())
			return 3
		}
		fmt.Println("EXIT ok")
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown child role %q\n", role)
	return 2
}

// runAppChild opens an application session by hand (no SDK, so nothing
// answers on its behalf), prints the Welcome, then every message the agent
// sends, until its stdin closes: "WELCOME session=… pid=… self=… flags=…",
// "MSG type=… nfds=…", "BYE".
func runAppChild(socket string) int {
	c, err := wire.Dial(socket)
	if err != nil {
		fmt.Printf("FAIL err=%q\n", err.Error())
		return 3
	}
	defer c.Close()
	h := wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, Role: wire.RoleApp, Name: os.Getenv("HANDOFF_NAME")}
	if os.Getenv("STANDBY") == "1" {
		h.Flags = wire.HelloStandby
	}
	if err := c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeHello}, Body: h.Marshal()}); err != nil {
		fmt.Printf("FAIL err=%q\n", err.Error())
		return 3
	}
	m, err := c.Recv()
	if err != nil {
		fmt.Printf("FAIL err=%q\n", err.Error())
		return 3
	}
	m.CloseFDs()
	var w wire.Welcome
	if m.Type != wire.TypeWelcome || w.Unmarshal(m.Body) != nil {
		fmt.Printf("FAIL got=%v\n", m.Type)
		return 3
	}
	c.SetVersion(uint8(w.Version))
	fmt.Printf("WELCOME session=%d pid=%d self=%d flags=%d\n", w.SessionID, w.PID, os.Getpid(), w.Flags)
	var mu sync.Mutex // keeps MSG lines before BYE
	go func() {
		for {
			m, err := c.Recv()
			if err != nil {
				return
			}
			n := len(m.FDs)
			m.CloseFDs()
			mu.Lock()
			fmt.Printf("MSG type=%v nfds=%d\n", m.Type, n)
			mu.Unlock()
		}
	}()
	io.Copy(io.Discard, os.Stdin)
	mu.Lock()
	fmt.Println("BYE")
	return 0
}

// child is a re-executed test binary.
type child struct {
	t     *testing.T
	cmd   *exec.Cmd
	pid   int
	stdin io.WriteCloser
	lines chan string
	done  chan struct{} // closed once the process was reaped
}

// nobody is the uid and gid children run as when a test needs a peer the
// agent must not trust.
const nobody = 65534

// needRoot skips a test that must start children with another uid.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test starts a child with another uid (SysProcAttr.Credential), which only root may do")
	}
}

var (
	sharedOnce sync.Once
	sharedDir  string
	sharedExe  string
	sharedErr  error
)

// exeForOthers returns a copy of the test binary that another uid may
// execute: go test builds it in a directory only its user can enter.
func exeForOthers(t *testing.T) string {
	t.Helper()
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "nodeagent-test-")
		if sharedErr != nil {
			return
		}
		if sharedErr = os.Chmod(sharedDir, 0o755); sharedErr != nil {
			return
		}
		var self string
		if self, sharedErr = os.Executable(); sharedErr != nil {
			return
		}
		var src, dst *os.File
		if src, sharedErr = os.Open(self); sharedErr != nil {
			return
		}
		defer src.Close()
		sharedExe = filepath.Join(sharedDir, "nodeagent.test")
		if dst, sharedErr = os.OpenFile(sharedExe, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755); sharedErr != nil {
			return
		}
		if _, sharedErr = io.Copy(dst, src); sharedErr != nil {
			dst.Close()
			return
		}
		sharedErr = dst.Close()
	})
	if sharedErr != nil {
		t.Fatalf("copy the test binary for another uid: %v", sharedErr)
	}
	return sharedExe
}

// openSocketPath returns an agent socket path in a directory every uid
// may enter, for agents that children of another uid must reach.
func openSocketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "handoff-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "run", "agent.sock")
}

// startChild runs this test binary as role with env added; with cred it
// runs as that user. The child is killed and reaped when the test ends.
func startChild(t *testing.T, role string, cred *syscall.Credential, env ...string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		exe = exeForOthers(t)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_CHILD="+role)
	cmd.Env = append(cmd.Env, env...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	cmd.Stderr = &childproc.LogWriter{T: t, Prefix: role}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child %s: %v", role, err)
	}
	c := &child{t: t, cmd: cmd, pid: cmd.Process.Pid, stdin: stdin, lines: make(chan string, 64), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(c.kill)
	return c
}

// kill ends the child and waits until it was reaped, so that none of its
// descriptors in this process (pipes, pidfd) are still open afterwards.
func (c *child) kill() {
	c.cmd.Process.Kill()
	for range c.lines {
	}
	<-c.done
}

// line waits for the next line the child prints that starts with prefix,
// failing on a line that starts with any of fail.
func (c *child) line(prefix string, fail ...string) string {
	c.t.Helper()
	deadline := time.After(bound)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("child %d exited before printing %q", c.pid, prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
			for _, f := range fail {
				if strings.HasPrefix(l, f) {
					c.t.Fatalf("child %d printed %q while %q was expected", c.pid, l, prefix)
				}
			}
		case <-deadline:
			c.t.Fatalf("child %d printed no %q within %v", c.pid, prefix, bound)
		}
	}
}

// field extracts key=value from a child's line.
var field = childproc.Field
