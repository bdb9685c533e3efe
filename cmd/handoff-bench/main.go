// Command handoff-bench is `make bench`: for N streaming connections
// under a new-connection load it measures the pause of a migration (the
// source stops serving → the target serves), *all resumed* (the pause and
// then until the target resumed every connection), the whole migration
// time and descriptors per second, and in the same run the physical floor
// of moving N sockets between processes with SCM_RIGHTS in batches of 253
// (one hop and two hops, idle and under the same load), printed as ratios.
//
// Beside the streams, a few request/response clients (the streamer's
// /echo mode, in a process of their own) send a request every 10 ms and
// time each round trip: the bench prints p50, p99 and max of the round
// trips that overlapped a migration against those of a quiet window just
// before it, the same clients in the same run. This is what a websocket or
// MQTT client feels; the streams' tick hides the pause.
//
// It prints the targets of issue #12 and whether the medians over the
// migrations meet them, and measures the baseline a user would otherwise
// have: stop the old process, start the new one, and count the
// connections that were reset. With -python it also migrates, in the same
// run, from the Go streamer to examples/pystreamer and back (after the
// request/response clients stopped: the Python streamer has no /echo), and
// reports those pauses beside the Go-to-Go pause and the floor.
//
// Every process stays within N descriptors and about a thousand more: the
// floor's client ends live in a process of their own, the echo clients in
// another; the bench process holds the N streams and the short connections
// in flight.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
	"github.com/handoff-dev/handoff/internal/fdlimit"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/test/support/harness"
)

type migRow struct {
	n       int
	tick    time.Duration // the streams' pacing
	pauses  []time.Duration
	resumes []time.Duration // pause + until the target resumed every imported connection
	starts  []time.Duration // of that, after the pause: until the target had handed every connection to its goroutine
	totals  []time.Duration
	stalls  []time.Duration
	fds     int
	// windows are, per migration, the CLOCK_MONOTONIC span of the
	// migration (from the request to the agent until the target resumed
	// every connection) and of a quiet window just before it.
	windows []window
	echo    echoResult
	floor   floorResult
	// loadedFloor is the same floor measured while the streams and the
	// load client run, as the migrations do: how much of the pause the
	// machine's other work costs any descriptor transfer.
	loadedFloor floorResult
	stats       loadclient.Stats
	baseResets  int64
	baseClosed  int64
	baseDown    time.Duration
	// toPy and fromPy are the pauses of migrations to and from a Python
	// streamer (-python).
	toPy, fromPy []time.Duration
}

func main() {
	if role := os.Getenv(floorRoleEnv); role != "" {
		floorChild(role)
		return
	}
	if os.Getenv(echoRoleEnv) != "" {
		echoChild()
		return
	}
	exe, _ := os.Executable()
	var (
		bin     = flag.String("bin", filepath.Dir(exe), "directory with the nodeagent and streamer binaries")
		ns      = flag.String("n", "1000,5000,15000", "comma-separated connection counts")
		reps    = flag.Int("reps", 5, "migrations per N; medians are reported")
		fReps   = flag.Int("floor-reps", 7, "runs of each floor (one hop, two hops; idle and under load) per N; medians are reported")
		rate    = flag.Int("rate", 1024, "stream bytes per second per connection")
		tick    = flag.Duration("tick", 0, "streamer pacing interval (0: 250ms, longer above 5000 connections so that the streams wake the server at most 20000 times a second)")
		newRate = flag.Float64("new-rate", 50, "new short connections per second during the run")
		verbose = flag.Bool("v", false, "show the processes' logs")
		expDef  = flag.Bool("expect-default", false, "start the standby streamers without --expect N, so that they prepare memory for the SDK's default number of connections rather than for N")
		echoN   = flag.Int("echo-clients", 50, "request/response clients beside the N streams (0: none)")
		echoInt = flag.Duration("echo-interval", 10*time.Millisecond, "interval between two requests of one request/response client")
		floorOn = flag.Bool("floor-only", false, "measure the idle floors only, no migrations")
		targetN = flag.Int("target-min-n", 5000, "the smallest N the targets apply to")
		python  = flag.String("python", "", "path of examples/pystreamer/pystreamer.py: also migrate to a Python streamer and back, reps times each (needs python3 3.11 or newer)")
	)
	flag.Parse()
	if *python != "" {
		dir, err := pythonBin(*bin, *python)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			os.Exit(2)
		}
		defer os.RemoveAll(dir)
		*bin = dir
	}
	soft, hard, err := fdlimit.Raise()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
	}
	fmt.Printf("open-file limit: soft %d, hard %d\n", soft, hard)
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	var rows []migRow
	failed := false
	for _, f := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "bench: bad N %q\n", f)
			os.Exit(2)
		}
		// The bench process holds the N streams and the short
		// connections in flight; every other process N sockets at most.
		if need := n + 1024 + 64; need > int(soft) {
			fmt.Fprintf(os.Stderr, "bench: N=%d needs %d descriptors in the bench process; the limit is %d\n", n, need, soft)
			os.Exit(2)
		}
		if *floorOn {
			fl, err := measureFloor(n, *fReps)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench N=%d: floor: %v\n", n, err)
				os.Exit(1)
			}
			fmt.Printf("N=%d floor one hop %v, two hops %v; two hops, every run: %v\n", n, fl.oneHop, fl.twoHop, sorted(fl.twos))
			continue
		}
		t := *tick
		if t == 0 {
			// 20000 connections' ticks a second are about what two shared
			// cores serve beside the clients that verify every byte;
			// beyond that the streams alone saturate the machine (15000
			// streams at 250 ms took 55 s to open, at 750 ms 11 s).
			t = max(250*time.Millisecond, time.Duration(n)*time.Second/20000)
		}
		cfg := benchConfig{bin: *bin, n: n, reps: *reps, floorReps: *fReps, rate: *rate, tick: t, newRate: *newRate,
			verbose: *verbose, expectDefault: *expDef, echoClients: *echoN, echoInterval: *echoInt, python: *python != ""}
		r, err := benchN(ctx, cfg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench N=%d FAILED: %v\n", n, err)
			failed = true
			continue
		}
		rows = append(rows, r)
	}
	if *floorOn {
		return
	}
	report(rows, *echoN, *echoInt, *targetN)
	if failed {
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// pythonBin makes a directory with the agent and the Go streamer of bin
// and a pystreamer that runs script with python3, for harness.Env.
func pythonBin(bin, script string) (string, error) {
	abs, err := filepath.Abs(script)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", fmt.Errorf("-python: %w", err)
	}
	dir, err := os.MkdirTemp("", "handoff-bench-bin-")
	if err != nil {
		return "", err
	}
	for _, b := range []string{"nodeagent", "streamer"} {
		src, err := filepath.Abs(filepath.Join(bin, b))
		if err == nil {
			err = os.Symlink(src, filepath.Join(dir, b))
		}
		if err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	sh := "#!/bin/sh\nexec python3 -u " + abs + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "pystreamer"), []byte(sh), 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// benchConfig is one N's run.
type benchConfig struct {
	bin                      string
	n, reps, floorReps, rate int
	tick                     time.Duration // the streams' pacing
	newRate                  float64
	verbose, expectDefault   bool
	echoClients              int
	echoInterval             time.Duration
	python                   bool // also migrate to a Python streamer and back
}

func benchN(ctx context.Context, c benchConfig) (migRow, error) {
	bin, n, reps, floorReps, rate, tick, newRate, verbose, expectDefault := c.bin, c.n, c.reps, c.floorReps, c.rate, c.tick, c.newRate, c.verbose, c.expectDefault
	r := migRow{n: n, tick: tick}
	logf("N=%d: measuring the SCM_RIGHTS floor (%d runs each of one and two hops)", n, floorReps)
	fl, err := measureFloor(n, floorReps)
	if err != nil {
		return r, fmt.Errorf("floor: %w", err)
	}
	r.floor = fl
	logf("N=%d: floor one hop %v, two hops %v", n, fl.oneHop, fl.twoHop)

	env := &harness.Env{Bin: bin}
	if verbose {
		env.Log = os.Stderr
	}
	if err := env.Init(); err != nil {
		return r, err
	}
	defer env.Close()
	if _, err := env.StartAgent(); err != nil {
		return r, err
	}
	adm, err := env.Admin()
	if err != nil {
		return r, err
	}
	defer adm.Close()
	cur, err := env.StartStreamer(harness.Streamer{Label: "streamer-1", Addr: "127.0.0.1:0", Rate: rate, Tick: tick})
	if err != nil {
		return r, err
	}
	addr := addrOf(cur)
	var echo *echoProc
	if c.echoClients > 0 {
		logf("N=%d: starting %d request/response clients, a request every %v each", n, c.echoClients, c.echoInterval)
		if echo, err = startEcho(addr, c.echoClients, c.echoInterval); err != nil {
			return r, err
		}
		defer echo.kill()
	}
	logf("N=%d: opening %d verifying streams to %s (a chunk every %v) with %.0f new connections/s", n, n, addr, tick, newRate)
	client, err := loadclient.Start(ctx, loadclient.Config{Addr: addr, Streams: n, NewConnRate: newRate})
	if err != nil {
		return r, err
	}
	defer client.Stop()
	sess, err := adm.WaitSession(int32(cur.Pid()), 10*time.Second)
	if err != nil {
		return r, err
	}
	if err := client.WaitAdvanced(ctx, client.Mark(), 1); err != nil {
		return r, err
	}
	if r.loadedFloor, err = measureFloor(n, floorReps); err != nil {
		return r, fmt.Errorf("floor under load: %w", err)
	}
	logf("N=%d: floor under the streams' load: one hop %v, two hops %v", n, r.loadedFloor.oneHop, r.loadedFloor.twoHop)
	for i := 1; i <= reps; i++ {
		// The standby streamer prepares memory for the connections it
		// will receive, as a server sized for its load would.
		expect := n
		if expectDefault {
			expect = 0
		}
		next, err := env.StartStreamer(harness.Streamer{Label: fmt.Sprintf("streamer-%d", i+1), Addr: "127.0.0.1:0", Rate: rate, Tick: tick, Standby: true, Expect: expect})
		if err != nil {
			return r, err
		}
		nsess, err := adm.WaitSession(int32(next.Pid()), 60*time.Second)
		if err != nil {
			return r, err
		}
		// The quiet window: the target has prepared and joined, and every
		// stream receives a tick's worth of bytes; the request/response
		// clients' round trips in it are the reference for those of the
		// migration, same clients, same load, same moment of the run.
		var w window
		w.quietFrom = loadclient.Monotonic()
		if err := client.WaitAdvanced(ctx, client.Mark(), int64(rate)*int64(tick)/int64(time.Second)); err != nil {
			return r, err
		}
		w.quietTo = loadclient.Monotonic()
		client.ResetStall()
		mark := client.Mark()
		w.from = loadclient.Monotonic()
		res, err := adm.Migrate(admin.Request{From: sess.ID, To: nsess.ID}, nil)
		if err != nil {
			return r, err
		}
		if res.Phase != "Completed" {
			return r, fmt.Errorf("migration %d %s: %s: %s", i, res.Phase, res.Reason, res.Message)
		}
		if err := next.WaitServing(30 * time.Second); err != nil {
			return r, err
		}
		// The pause ends when the target has taken every connection over
		// and answers Serving; its goroutines then pick the connections
		// up. This is how long that took, so that work moved after Ready
		// shows.
		after, started, err := resumedAfter(next)
		if err != nil {
			return r, err
		}
		w.to = loadclient.Monotonic()
		r.windows = append(r.windows, w)
		if err := cur.Wait(30 * time.Second); err != nil {
			return r, fmt.Errorf("old streamer: %w", err)
		}
		if err := client.WaitAdvanced(ctx, mark, 1); err != nil {
			return r, fmt.Errorf("streams did not resume: %w", err)
		}
		st := client.Snapshot()
		r.pauses = append(r.pauses, res.Pause())
		r.resumes = append(r.resumes, res.Pause()+after)
		r.starts = append(r.starts, started)
		r.totals = append(r.totals, res.Duration())
		r.stalls = append(r.stalls, st.LongestStall)
		r.fds = res.Connections + res.Listeners + res.Packets
		logf("N=%d migration %d: %d descriptors, pause %v, all resumed %v, total %v, longest client stall %v",
			n, i, r.fds, res.Pause().Round(time.Microsecond), (res.Pause() + after).Round(time.Microsecond), res.Duration().Round(time.Microsecond), st.LongestStall.Round(time.Millisecond))
		if f := st.Failures(); len(f) > 0 {
			return r, fmt.Errorf("clients failed: %s", strings.Join(f, "; "))
		}
		cur, sess = next, nsess
	}
	if echo != nil {
		st, trips, err := echo.stop()
		if err != nil {
			return r, fmt.Errorf("request/response clients: %w", err)
		}
		if f := st.Failures(); len(f) > 0 || st.Alive != c.echoClients {
			return r, fmt.Errorf("request/response clients failed (%v): %s", st, strings.Join(f, "; "))
		}
		r.echo = analyseEcho(trips, r.windows)
		r.echo.stats = st
		logf("N=%d: %v", n, st)
	}
	if c.python {
		if cur, sess, err = benchPython(ctx, env, adm, client, &r, cur, sess, reps, rate, tick); err != nil {
			return r, err
		}
	}
	r.stats = client.Stop()
	if f := r.stats.Failures(); len(f) > 0 || r.stats.Alive != n {
		return r, fmt.Errorf("clients failed: %s", strings.Join(f, "; "))
	}
	env.Close()

	// The baseline: the same load against a process that is stopped and
	// replaced the ordinary way.
	base, err := baseline(ctx, bin, n, rate, tick, newRate, verbose)
	if err != nil {
		return r, fmt.Errorf("baseline: %w", err)
	}
	r.baseResets, r.baseClosed, r.baseDown = base.Resets+base.Errors, base.Closed, base.downtime
	return r, nil
}

// benchPython migrates reps times from the Go streamer to a Python one and
// back, under the same clients, and records both pauses.
func benchPython(ctx context.Context, env *harness.Env, adm *admin.Client, client *loadclient.Client, r *migRow, cur *harness.Proc, sess admin.Session, reps, rate int, tick time.Duration) (*harness.Proc, admin.Session, error) {
	hop := func(label string, py bool) (time.Duration, error) {
		var next *harness.Proc
		var err error
		if py {
			next, err = env.Start(label, "pystreamer", "--addr", "127.0.0.1:0", "--socket", env.Socket(), "--rate", strconv.Itoa(rate),
				"--tick", strconv.FormatFloat(tick.Seconds(), 'f', -1, 64), "--standby", "--standby-timeout", "120")
		} else {
			next, err = env.StartStreamer(harness.Streamer{Label: label, Addr: "127.0.0.1:0", Rate: rate, Tick: tick, Standby: true, Expect: r.n})
		}
		if err != nil {
			return 0, err
		}
		nsess, err := adm.WaitSession(int32(next.Pid()), 20*time.Second)
		if err != nil {
			return 0, err
		}
		if err := client.WaitAdvanced(ctx, client.Mark(), int64(rate)*int64(tick)/int64(time.Second)); err != nil {
			return 0, err
		}
		mark := client.Mark()
		res, err := adm.Migrate(admin.Request{From: sess.ID, To: nsess.ID}, nil)
		if err != nil {
			return 0, err
		}
		if res.Phase != "Completed" {
			return 0, fmt.Errorf("migration to %s %s: %s: %s", label, res.Phase, res.Reason, res.Message)
		}
		if err := next.WaitServing(30 * time.Second); err != nil {
			return 0, err
		}
		if err := cur.Wait(30 * time.Second); err != nil {
			return 0, fmt.Errorf("old streamer: %w", err)
		}
		if err := client.WaitAdvanced(ctx, mark, 1); err != nil {
			return 0, fmt.Errorf("streams did not resume in %s: %w", label, err)
		}
		if f := client.Snapshot().Failures(); len(f) > 0 {
			return 0, fmt.Errorf("clients failed: %s", strings.Join(f, "; "))
		}
		logf("N=%d migration to %s: %d descriptors, pause %v, total %v", r.n, label,
			res.Connections+res.Listeners+res.Packets, res.Pause().Round(time.Microsecond), res.Duration().Round(time.Microsecond))
		cur, sess = next, nsess
		return res.Pause(), nil
	}
	for i := 1; i <= reps; i++ {
		p, err := hop(fmt.Sprintf("pystreamer-%d", i), true)
		if err != nil {
			return cur, sess, err
		}
		r.toPy = append(r.toPy, p)
		if p, err = hop(fmt.Sprintf("streamer-back-%d", i), false); err != nil {
			return cur, sess, err
		}
		r.fromPy = append(r.fromPy, p)
	}
	return cur, sess, nil
}

type baseStats struct {
	loadclient.Stats
	downtime time.Duration
}

// baseline stops a streamer with SIGTERM and starts a new one on the
// same port, with no agent: every stream dies.
func baseline(ctx context.Context, bin string, n, rate int, tick time.Duration, newRate float64, verbose bool) (baseStats, error) {
	env := &harness.Env{Bin: bin}
	if verbose {
		env.Log = os.Stderr
	}
	if err := env.Init(); err != nil {
		return baseStats{}, err
	}
	defer env.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return baseStats{}, err
	}
	addr := ln.Addr().String()
	ln.Close()
	old, err := env.StartStreamer(harness.Streamer{Label: "plain-1", Addr: addr, Rate: rate, Tick: tick})
	if err != nil {
		return baseStats{}, err
	}
	logf("N=%d baseline: %d streams to a plain process, then stop it and start a new one", n, n)
	client, err := loadclient.Start(ctx, loadclient.Config{Addr: addr, Streams: n, NewConnRate: newRate})
	if err != nil {
		return baseStats{}, err
	}
	defer client.Stop()
	if err := client.WaitAdvanced(ctx, client.Mark(), 1); err != nil {
		return baseStats{}, err
	}
	stop := time.Now()
	old.Signal(syscall.SIGTERM)
	if err := old.Wait(30 * time.Second); err != nil {
		return baseStats{}, fmt.Errorf("stop old: %w", err)
	}
	if _, err := env.StartStreamer(harness.Streamer{Label: "plain-2", Addr: addr, Rate: rate, Tick: tick}); err != nil {
		return baseStats{}, err
	}
	down := time.Since(stop)
	st := client.Stop()
	logf("N=%d baseline: %d of %d streams reset or failed, %d closed by the server; new process serving after %v",
		n, st.Resets+st.Errors, n, st.Closed, down.Round(time.Millisecond))
	return baseStats{Stats: st, downtime: down}, nil
}

// resumedAfter reads the target's "resumed N imported connections D after
// ready (all started after S)" line: D, and S.
func resumedAfter(p *harness.Proc) (after, started time.Duration, err error) {
	l, err := p.Line("imported connections", 30*time.Second)
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(l)
	for i, w := range f {
		switch {
		case w == "connections" && i+1 < len(f):
			if after, err = time.ParseDuration(f[i+1]); err != nil {
				return 0, 0, fmt.Errorf("%s: %q: %w", p.Name, l, err)
			}
		case w == "started" && i+2 < len(f) && f[i+1] == "after":
			if started, err = time.ParseDuration(strings.TrimSuffix(f[i+2], ")")); err != nil {
				return 0, 0, fmt.Errorf("%s: %q: %w", p.Name, l, err)
			}
		}
	}
	if after == 0 {
		return 0, 0, fmt.Errorf("%s: no duration in %q", p.Name, l)
	}
	return after, started, nil
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

func report(rows []migRow, echoClients int, echoInterval time.Duration, targetMinN int) {
	ms := func(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }
	fmt.Println()
	fmt.Println("Migration pause against the physical floor (medians; floor measured in this run, same N):")
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\ttick\tfds\tfloor 1 hop\tfloor 2 hops\tpause\tpause/2-hop floor\tall resumed\tall resumed/pause\ttotal\tfds/s\tclient stall\tresets\tlost bytes\t")
	for _, r := range rows {
		p, a, t, s := median(r.pauses), median(r.resumes), median(r.totals), median(r.stalls)
		fdps := float64(r.fds) / t.Seconds()
		fmt.Fprintf(tw, "%d\t%v\t%d\t%v\t%v\t%v\t%.1fx\t%v\t%.1fx\t%v\t%.0f\t%v\t%d\t%d\t\n", r.n, r.tick, r.fds, ms(r.floor.oneHop), ms(r.floor.twoHop),
			ms(p), float64(p)/float64(r.floor.twoHop), ms(a), float64(a)/float64(p), ms(t), fdps, s.Round(time.Millisecond),
			r.stats.Resets, r.stats.Mismatches)
	}
	tw.Flush()
	fmt.Println()
	fmt.Println("The same floor measured while the streams and the clients run, as during the migrations:")
	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\tfloor 1 hop\tfloor 2 hops\tpause/2-hop floor under load\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%v\t%v\t%.1fx\t\n", r.n, ms(r.loadedFloor.oneHop), ms(r.loadedFloor.twoHop),
			float64(median(r.pauses))/float64(r.loadedFloor.twoHop))
	}
	tw.Flush()
	fmt.Println()
	fmt.Println("What all resumed is made of (medians): the pause; the target's import loop, which decodes each")
	fmt.Println("connection's state, tracks it and starts its goroutine (those started run meanwhile, on the same")
	fmt.Println("two cores); then the rest of those goroutines' first runs (a due chunk written, or parked):")
	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\tpause\timport loop\trest of first runs\tall resumed\t")
	for _, r := range rows {
		p, a, st := median(r.pauses), median(r.resumes), median(r.starts)
		fmt.Fprintf(tw, "%d\t%v\t%v\t%v\t%v\t\n", r.n, ms(p), ms(st), ms(max(a-p-st, 0)), ms(a))
	}
	tw.Flush()
	if echoClients > 0 {
		fmt.Println()
		fmt.Printf("Request/response round trips (%d clients beside the streams, a request every %v each): those in flight\n", echoClients, echoInterval)
		fmt.Println("during a migration, against those of a quiet window just before each migration (same clients, same run):")
		tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "N\tduring: requests\tp50\tp99\tmax\tquiet: requests\tp50\tp99\tmax\tworst per migration, median\t")
		for _, r := range rows {
			e := r.echo
			fmt.Fprintf(tw, "%d\t%d\t%v\t%v\t%v\t%d\t%v\t%v\t%v\t%v\t\n", r.n,
				len(e.during), ms(quantile(e.during, 0.5)), ms(quantile(e.during, 0.99)), ms(quantile(e.during, 1)),
				len(e.quiet), ms(quantile(e.quiet, 0.5)), ms(quantile(e.quiet, 0.99)), ms(quantile(e.quiet, 1)),
				ms(median(e.worst)))
		}
		tw.Flush()
	}
	fmt.Println()
	fmt.Printf("Targets (issue #12), medians over the migrations of each N; they apply at N >= %d:\n", targetMinN)
	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "N\tpause <= 1x the 2-hop floor\tall resumed <= 2x the pause\tworst round trip during a migration <= pause + 5ms")
	for _, r := range rows {
		p, a, fl := median(r.pauses), median(r.resumes), r.floor.twoHop
		verdict := func(got, limit time.Duration) string {
			v := "met"
			if got > limit {
				v = "NOT met"
			}
			if r.n < targetMinN {
				v = "(not a target at this N)"
			}
			return fmt.Sprintf("%v vs %v: %s", ms(got), ms(limit), v)
		}
		worst := "no request/response clients"
		if echoClients > 0 {
			worst = verdict(median(r.echo.worst), p+5*time.Millisecond)
		}
		fmt.Fprintf(tw, "%d\t%s (%.1fx; %.1fx the floor under load)\t%s\t%s\n", r.n, verdict(p, fl), float64(p)/float64(fl),
			float64(p)/float64(r.loadedFloor.twoHop), verdict(a, 2*p), worst)
	}
	tw.Flush()
	fmt.Println()
	fmt.Println("Baseline without handoff (stop the old process, start the new one):")
	tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\tstreams reset or failed\tclosed by server\tnew process serving after\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%v\t\n", r.n, r.baseResets, r.baseClosed, r.baseDown.Round(time.Millisecond))
	}
	tw.Flush()
	if len(rows) > 0 && len(rows[0].toPy) > 0 {
		fmt.Println()
		fmt.Println("With a Python streamer (examples/pystreamer), same run, same clients (medians):")
		tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "N\tfloor 2 hops\tGo → Go\tGo → Python\tPython → Go\t")
		for _, r := range rows {
			fmt.Fprintf(tw, "%d\t%v\t%v\t%v\t%v\t\n", r.n, r.floor.twoHop.Round(time.Microsecond), median(r.pauses).Round(time.Microsecond),
				median(r.toPy).Round(time.Microsecond), median(r.fromPy).Round(time.Microsecond))
		}
		tw.Flush()
	}
	fmt.Println()
	for _, r := range rows {
		fmt.Printf("N=%d all pauses: %v\n", r.n, sorted(r.pauses))
		if len(r.toPy) > 0 {
			fmt.Printf("N=%d all pauses Go → Python: %v\n", r.n, sorted(r.toPy))
			fmt.Printf("N=%d all pauses Python → Go: %v\n", r.n, sorted(r.fromPy))
		}
		fmt.Printf("N=%d all resumed: %v\n", r.n, sorted(r.resumes))
		fmt.Printf("N=%d all started after the pause: %v\n", r.n, sorted(r.starts))
		if echoClients > 0 {
			fmt.Printf("N=%d worst round trip per migration: %v\n", r.n, sorted(r.echo.worst))
		}
		// The floor moves from run to run on a shared machine, and the
		// ratio with it: every run is shown, not only the median.
		fmt.Printf("N=%d all floors, 2 hops: %v\n", r.n, sorted(r.floor.twos))
		fmt.Printf("N=%d all floors, 2 hops, under load: %v\n", r.n, sorted(r.loadedFloor.twos))
	}
}

func sorted(d []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	for i := range s {
		s[i] = s[i].Round(time.Microsecond)
	}
	return s
}
