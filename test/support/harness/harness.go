// Package harness starts the real binaries (agent, streamer) as processes
// and drives them through the agent's admin socket. The demo, the benchmark
// and the end-to-end tests share it so they exercise exactly what a user
// runs.
package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/nodeagent/admin"
)

// Env is a private installation: a directory holding the agent socket and
// the binaries to run.
type Env struct {
	// Bin is the directory with nodeagent and streamer.
	Bin string
	// Dir holds the agent socket; a temporary directory if empty.
	Dir string
	// Log receives the processes' stderr, prefixed with their names; nil
	// discards it.
	Log io.Writer

	mu    sync.Mutex
	procs []*Proc
}

// Socket is the agent socket path of this environment.
func (e *Env) Socket() string { return filepath.Join(e.Dir, "run", "agent.sock") }

// Init creates Dir when it is empty.
func (e *Env) Init() error {
	if e.Dir == "" {
		d, err := os.MkdirTemp("", "handoff-")
		if err != nil {
			return err
		}
		e.Dir = d
	}
	for _, b := range []string{"nodeagent", "streamer"} {
		if _, err := os.Stat(filepath.Join(e.Bin, b)); err != nil {
			return fmt.Errorf("binary %s missing in %s (run make build): %w", b, e.Bin, err)
		}
	}
	return nil
}

// Proc is a started process whose stdout lines can be awaited.
type Proc struct {
	// ServingLine is the streamer's "serving on ADDR" line, once seen.
	ServingLine string
	Name        string
	Cmd         *exec.Cmd
	lines       chan string
	done        chan struct{}
	err         error
}

// Pid is the process ID.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Line waits for the next stdout line that contains substr.
func (p *Proc) Line(substr string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				<-p.done
				return "", fmt.Errorf("%s exited (%v) before printing %q", p.Name, p.err, substr)
			}
			if strings.Contains(l, substr) {
				return l, nil
			}
		case <-t.C:
			return "", fmt.Errorf("%s printed no %q within %v", p.Name, substr, timeout)
		}
	}
}

// Wait waits for the process to exit, up to timeout.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s (pid %d) still running after %v", p.Name, p.Pid(), timeout)
	}
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) { _ = p.Cmd.Process.Signal(sig) }

// Start runs bin/name with args.
func (e *Env) Start(label, name string, args ...string) (*Proc, error) {
	cmd := exec.Command(filepath.Join(e.Bin, name), args...)
	cmd.Env = append(os.Environ(), "HANDOFF_SOCKET="+e.Socket())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if e.Log != nil {
		cmd.Stderr = &prefixWriter{w: e.Log, prefix: label + ": "}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: label, Cmd: cmd, lines: make(chan string, 64), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default: // nobody is waiting for lines this old
			}
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p, nil
}

// StartAgent runs the agent and waits until its socket answers.
func (e *Env) StartAgent(extra ...string) (*Proc, error) {
	args := append([]string{"--socket", e.Socket(), "--metrics-bind-address", "0"}, extra...)
	p, err := e.Start("agent", "nodeagent", args...)
	if err != nil {
		return nil, err
	}
	if _, err := p.Line("nodeagent: ready", 20*time.Second); err != nil {
		p.Signal(syscall.SIGKILL)
		return nil, fmt.Errorf("agent did not come up on %s: %w", e.Socket(), err)
	}
	return p, nil
}

// Streamer options.
type Streamer struct {
	Label   string
	Addr    string
	Rate    int
	Tick    time.Duration
	Standby bool
	Expect  int // with Standby: --expect, the connections to prepare for (0: the streamer's default)
}

// StartStreamer runs the example streamer. A standby streamer returns at
// once (it serves after a migration); otherwise it waits until serving.
func (e *Env) StartStreamer(s Streamer) (*Proc, error) {
	args := []string{"--addr", s.Addr, "--socket", e.Socket()}
	if s.Rate > 0 {
		args = append(args, "--rate", fmt.Sprint(s.Rate))
	}
	if s.Tick > 0 {
		args = append(args, "--tick", s.Tick.String())
	}
	if s.Standby {
		args = append(args, "--standby", "--standby-timeout", "2m")
		if s.Expect != 0 {
			args = append(args, "--expect", fmt.Sprint(s.Expect))
		}
	}
	p, err := e.Start(s.Label, "streamer", args...)
	if err != nil {
		return nil, err
	}
	if !s.Standby {
		if err := p.WaitServing(30 * time.Second); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// WaitServing waits for a streamer's "serving on" line and keeps it.
func (p *Proc) WaitServing(timeout time.Duration) error {
	l, err := p.Line("serving on", timeout)
	if err != nil {
		return err
	}
	p.ServingLine = l
	return nil
}

// Admin opens an administrator session.
func (e *Env) Admin() (*admin.Client, error) { return admin.Dial(e.Socket()) }

// Close kills every process still running and removes a temporary Dir.
func (e *Env) Close() {
	e.mu.Lock()
	ps := e.procs
	e.mu.Unlock()
	for _, p := range ps {
		if !p.Exited() {
			p.Signal(syscall.SIGTERM)
			if p.Wait(5*time.Second) != nil {
				p.Signal(syscall.SIGKILL)
				_ = p.Wait(5 * time.Second)
			}
		}
	}
	if strings.HasPrefix(e.Dir, os.TempDir()) {
		os.RemoveAll(e.Dir)
	}
}

// Run ends when ctx does; a helper for callers that want context-bound
// waits on a process.
func (p *Proc) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-p.done:
		return p.err
	}
}

type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (w *prefixWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		fmt.Fprintf(w.w, "%s%s\n", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}
