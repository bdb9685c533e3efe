// Command streamer is the example workload of handoff: an HTTP/1.1 radio
// server whose streams are a pure function of (name, offset), so that a
// client can prove it lost and duplicated nothing across migrations.
//
//	streamer --addr 127.0.0.1:8080 --rate 16384 --tick 100ms
//	curl -sN http://127.0.0.1:8080/streams/demo | head -c 64 | xxd
//
// It runs until SIGINT or SIGTERM, or until its sockets were handed to a
// new process (then it exits 0, or with --linger waits for the signal).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/server"
)

func main() {
	var cfg server.Config
	flag.StringVar(&cfg.Addr, "addr", "127.0.0.1:8080", "TCP listen address")
	flag.IntVar(&cfg.Rate, "rate", server.DefaultRate, "body bytes per second per connection")
	flag.DurationVar(&cfg.Tick, "tick", server.DefaultTick, "pacing interval: each tick writes rate*tick bytes")
	flag.StringVar(&cfg.SessionName, "name", server.DefaultName, "handoff session name")
	flag.StringVar(&cfg.Socket, "socket", "", "handoff agent socket (default: $HANDOFF_SOCKET or the SDK default)")
	flag.BoolVar(&cfg.Standby, "standby", false, "wait for another process to hand its sockets over before serving")
	flag.DurationVar(&cfg.StandbyTimeout, "standby-timeout", 0, "how long to wait in standby (0: the SDK default)")
	flag.IntVar(&cfg.Expect, "expect", 0, "in standby, how many connections to prepare memory and goroutines for before joining (0: the SDK default, handoff.DefaultExpect)")
	flag.DurationVar(&cfg.Warmup, "warmup", 0, "time to spend after listening and before serving, as a server loading caches would (a window in which a test can kill a target mid-migration)")
	readyFile := flag.String("ready-file", "", "file that exists while this process serves: created once it serves, removed when its sockets moved away or it stops (for an exec readiness probe)")
	linger := flag.Bool("linger", false, "once the sockets moved away, stay (not ready) until SIGINT or SIGTERM instead of exiting: for pods whose restartPolicy is Always (a DaemonSet's), where kubelet would start the process again beside its successor")
	check := flag.Bool("check", false, "with --ready-file: exit 0 if the file exists, else 1, and serve nothing (the readiness probe itself)")
	flag.Parse()
	if *check {
		if *readyFile == "" {
			fmt.Fprintln(os.Stderr, "streamer: --check needs --ready-file")
			os.Exit(2)
		}
		if _, err := os.Stat(*readyFile); err != nil {
			fmt.Fprintf(os.Stderr, "streamer: not serving: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "streamer: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}

	logger := log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	cfg.Logf = logger.Printf
	if soft, hard, err := raiseFDLimit(); err != nil {
		logger.Printf("streamer: %v", err)
	} else {
		logger.Printf("streamer: open file limit %d (hard %d)", soft, hard)
	}
	var started time.Duration
	cfg.OnReady = func(i server.Info) {
		started = i.Started
		fmt.Printf("streamer: serving on %s (inherited=%t, imported %d connections)\n", i.Addr, i.Inherited, i.Imported)
		if *readyFile != "" {
			// A standby process is not ready until it serves: the
			// probe follows the handoff, not the port, which on the
			// host network the other process may be serving.
			if err := os.WriteFile(*readyFile, nil, 0o644); err != nil {
				logger.Printf("streamer: ready file: %v", err)
			}
		}
	}
	notReady := func() {
		if *readyFile != "" {
			if err := os.Remove(*readyFile); err != nil && !os.IsNotExist(err) {
				logger.Printf("streamer: ready file: %v", err)
			}
		}
	}
	cfg.OnResumed = func(n int, d time.Duration) {
		// OnResumed follows OnReady: the count it waits for includes it.
		fmt.Printf("streamer: resumed %d imported connections %v after ready (all started after %v)\n", n, d, started)
	}
	movedAway := false
	cfg.OnExit = func(s server.Summary) {
		notReady()
		movedAway = s.MovedAway
		why := "stopped"
		if s.MovedAway {
			why = "moved away"
		}
		fmt.Printf("streamer: %s: accepted=%d imported=%d rejected=%d finished=%d moved=%d bytes=%d\n",
			why, s.Accepted, s.Imported, s.Rejected, s.Finished, s.Moved, s.BytesSent)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	notReady() // left by a previous run of this container
	if err := server.Run(ctx, cfg); err != nil {
		notReady()
		logger.Print(err)
		os.Exit(1)
	}
	if movedAway && *linger {
		fmt.Println("streamer: lingering until stopped")
		<-ctx.Done()
	}
}

// raiseFDLimit sets the soft RLIMIT_NOFILE to the hard limit (a server
// holding thousands of connections needs it; newer Go runtimes already do
// this at start) and returns the resulting limits.
func raiseFDLimit() (soft, hard uint64, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, fmt.Errorf("get RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		want := lim
		want.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return lim.Cur, lim.Max, fmt.Errorf("raise RLIMIT_NOFILE soft limit from %d to %d: %w", lim.Cur, lim.Max, err)
		}
		lim.Cur = lim.Max
	}
	return lim.Cur, lim.Max, nil
}
