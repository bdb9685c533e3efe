package main

import (
	"bufio"
	"context"
	"encoding/gob"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
)

// The request/response clients run in a process of their own, this binary
// re-executed with echoRoleEnv set: their round trips are then timed by a
// process that the bench's own N streams (and their garbage collection) do
// not slow down. The child prints "ready" once every client is connected,
// runs until its stdin closes, then writes its counters and every round
// trip, gob-encoded, to stdout; or it prints "failed: why" and exits 1.

const echoRoleEnv = "HANDOFF_BENCH_ECHO"

// echoReport is what the echo child writes when it stops.
type echoReport struct {
	Stats loadclient.EchoStats
	Trips []loadclient.RoundTrip
}

// echoChild is the echo role's main.
func echoChild() {
	clients, _ := strconv.Atoi(os.Getenv("CLIENTS"))
	interval, _ := time.ParseDuration(os.Getenv("INTERVAL"))
	var rep echoReport
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	e, err := loadclient.StartEcho(ctx, loadclient.EchoConfig{Addr: os.Getenv("ADDR"), Clients: clients, Interval: interval,
		Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, "bench echo: "+f+"\n", a...) }})
	cancel()
	if err != nil {
		fmt.Printf("failed: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	rep.Stats, rep.Trips = e.Stop()
	w := bufio.NewWriter(os.Stdout)
	if err := gob.NewEncoder(w).Encode(&rep); err != nil {
		fmt.Fprintf(os.Stderr, "bench echo: %v\n", err)
		os.Exit(1)
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintf(os.Stderr, "bench echo: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// echoProc is a running echo child.
type echoProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// startEcho starts the echo child with clients connections to addr and
// returns once they are all connected.
func startEcho(addr string, clients int, interval time.Duration) (*echoProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), echoRoleEnv+"=1", "ADDR="+addr, "CLIENTS="+strconv.Itoa(clients), "INTERVAL="+interval.String())
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start request/response clients: %w", err)
	}
	p := &echoProc{cmd: cmd, stdin: in, out: bufio.NewReader(out)}
	if l, err := p.out.ReadString('\n'); err != nil || l != "ready\n" {
		p.kill()
		return nil, fmt.Errorf("request/response clients did not start: %q, %v", l, err)
	}
	return p, nil
}

// stop ends the child and returns its counters and round trips.
func (p *echoProc) stop() (loadclient.EchoStats, []loadclient.RoundTrip, error) {
	p.stdin.Close()
	var rep echoReport
	derr := gob.NewDecoder(p.out).Decode(&rep)
	werr := p.cmd.Wait()
	p.cmd = nil
	switch {
	case derr != nil:
		return rep.Stats, nil, fmt.Errorf("read the clients' report: %w (exit: %v)", derr, werr)
	case werr != nil:
		return rep.Stats, nil, fmt.Errorf("request/response clients: %w", werr)
	}
	return rep.Stats, rep.Trips, nil
}

// kill ends a child that was not stopped.
func (p *echoProc) kill() {
	if p.cmd != nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		p.cmd = nil
	}
}

// window is one migration's span and the quiet span before it, in
// CLOCK_MONOTONIC nanoseconds.
type window struct {
	quietFrom, quietTo int64
	from, to           int64
}

// echoResult summarises the round trips of one N.
type echoResult struct {
	stats loadclient.EchoStats
	// during are the round trips in flight at any moment of a
	// migration, quiet those wholly inside a quiet window.
	during, quiet []time.Duration
	// worst is, per migration, the longest round trip in flight during it.
	worst []time.Duration
}

// analyseEcho sorts the round trips into those that overlapped a
// migration and those of the quiet windows.
func analyseEcho(trips []loadclient.RoundTrip, ws []window) echoResult {
	var r echoResult
	for _, w := range ws {
		var worst time.Duration
		for _, t := range trips {
			switch {
			case t.Sent < w.to && t.Received > w.from:
				r.during = append(r.during, t.Duration())
				worst = max(worst, t.Duration())
			case t.Sent >= w.quietFrom && t.Received <= w.quietTo:
				r.quiet = append(r.quiet, t.Duration())
			}
		}
		r.worst = append(r.worst, worst)
	}
	slices.Sort(r.during)
	slices.Sort(r.quiet)
	return r
}

// quantile returns the q-quantile of sorted d (nearest rank), 0 if empty.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(q*float64(len(d))+0.999999) - 1
	return d[min(max(i, 0), len(d)-1)]
}
