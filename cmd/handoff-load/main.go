// Command handoff-load is a verifying load client for the example streaming
// server: it holds --streams long-lived streams, opens --new-rate short
// connections per second, checks every byte against the stream oracle and
// prints a stats line every second.
//
//	handoff-load --addr 127.0.0.1:8080 --streams 1000 --new-rate 50 --duration 60s
//
// It exits 1 if any byte was lost, duplicated or corrupted, any stream was
// reset or closed, or any short connection failed.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
	"github.com/handoff-dev/handoff/internal/fdlimit"
)

func main() {
	var cfg loadclient.Config
	flag.StringVar(&cfg.Addr, "addr", "127.0.0.1:8080", "server address")
	flag.IntVar(&cfg.Streams, "streams", 100, "long-lived streams to hold open")
	flag.Float64Var(&cfg.NewConnRate, "new-rate", 0, "short connections per second")
	flag.IntVar(&cfg.ShortBytes, "short-bytes", loadclient.DefaultShortBytes, "body bytes each short connection verifies")
	flag.StringVar(&cfg.NamePrefix, "prefix", loadclient.DefaultNamePrefix, "stream name prefix: stream i is PREFIX+i")
	flag.DurationVar(&cfg.DialTimeout, "dial-timeout", loadclient.DefaultDialTimeout, "timeout of one dial")
	duration := flag.Duration("duration", 0, "how long to run after the streams are open (0: until SIGINT or SIGTERM)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "handoff-load: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	logger := log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	cfg.Logf = logger.Printf
	if soft, _, err := fdlimit.Raise(); err != nil {
		logger.Printf("handoff-load: %v", err)
	} else if need := uint64(cfg.Streams) + 64; soft < need {
		logger.Printf("handoff-load: open file limit %d is below the %d this run needs", soft, need)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	c, err := loadclient.Start(ctx, cfg)
	if err != nil {
		logger.Printf("handoff-load: %v", err)
		os.Exit(1)
	}
	fmt.Printf("handoff-load: %d streams open to %s in %v\n", cfg.Streams, cfg.Addr, time.Since(began).Round(time.Millisecond))
	c.ResetStall() // report stalls of the run, not of the opening burst

	var end <-chan time.Time
	if *duration > 0 {
		t := time.NewTimer(*duration)
		defer t.Stop()
		end = t.C
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start, prev := time.Now(), c.Snapshot()
	prevAt := start
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-end:
			break loop
		case now := <-tick.C:
			st := c.Snapshot()
			rate := float64(st.BytesVerified-prev.BytesVerified) / now.Sub(prevAt).Seconds()
			fmt.Printf("t=%v %v rate=%s/s\n", now.Sub(start).Round(time.Second), st, loadclient.FormatBytes(int64(rate)))
			prev, prevAt = st, now
		}
	}
	st := c.Stop()
	fmt.Printf("handoff-load: final after %v: %v\n", time.Since(start).Round(time.Millisecond), st)
	if f := st.Failures(); len(f) > 0 {
		fmt.Printf("handoff-load: FAILED:\n%s\n", strings.Join(f, "\n"))
		os.Exit(1)
	}
	fmt.Println("handoff-load: OK: every byte verified, no resets, no closed streams")
}
