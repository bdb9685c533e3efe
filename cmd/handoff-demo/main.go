// Command handoff-demo is `make demo`: it starts the agent standalone and
// the example streamer, holds a few hundred verifying client streams
// open, migrates the streamer to a fresh process of itself and back
// several times, and prints a summary. It exits non-zero if any client
// lost, duplicated or corrupted a byte, any stream was reset, or any
// migration failed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
	"github.com/handoff-dev/handoff/internal/fdlimit"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/test/support/harness"
)

type row struct {
	n          int
	from, to   int
	res        admin.Result
	stall      time.Duration
	err        error
	afterStats loadclient.Stats
}

func main() {
	exe, _ := os.Executable()
	var (
		bin        = flag.String("bin", filepath.Dir(exe), "directory with the nodeagent and streamer binaries")
		streams    = flag.Int("streams", 300, "verifying client streams held open")
		newRate    = flag.Float64("new-rate", 20, "new short connections per second during the run")
		migrations = flag.Int("migrations", 4, "migrations to run (alternating between two processes' generations)")
		rate       = flag.Int("rate", 16384, "stream bytes per second per connection")
		verbose    = flag.Bool("v", false, "show the processes' logs")
	)
	flag.Parse()
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := run(ctx, *bin, *streams, *newRate, *migrations, *rate, *verbose); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo FAILED: %v\n", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, bin string, streams int, newRate float64, migrations, rate int, verbose bool) error {
	start := time.Now()
	fdlimit.Raise()
	env := &harness.Env{Bin: bin}
	if verbose {
		env.Log = os.Stderr
	}
	if err := env.Init(); err != nil {
		return err
	}
	defer env.Close()

	step("starting the node agent (standalone) on %s", env.Socket())
	if _, err := env.StartAgent(); err != nil {
		return err
	}
	adm, err := env.Admin()
	if err != nil {
		return err
	}
	defer adm.Close()

	cur, err := env.StartStreamer(harness.Streamer{Label: "streamer-1", Addr: "127.0.0.1:0", Rate: rate})
	if err != nil {
		return err
	}
	addr, err := streamerAddr(cur)
	if err != nil {
		return err
	}
	step("streamer pid %d serving http://%s/streams/<name>", cur.Pid(), addr)

	step("opening %d verifying client streams (every byte is checked) plus %.0f new connections/s", streams, newRate)
	client, err := loadclient.Start(ctx, loadclient.Config{Addr: addr, Streams: streams, NewConnRate: newRate})
	if err != nil {
		return fmt.Errorf("open client streams: %w", err)
	}
	defer client.Stop()
	sess, err := adm.WaitSession(int32(cur.Pid()), 10*time.Second)
	if err != nil {
		return err
	}

	var rows []row
	for i := 1; i <= migrations; i++ {
		// Let the clients see bytes from the current process first.
		mark := client.Mark()
		if err := client.WaitAdvanced(ctx, mark, int64(rate/10)); err != nil {
			return fmt.Errorf("streams did not advance before migration %d: %w", i, err)
		}
		next, err := env.StartStreamer(harness.Streamer{Label: fmt.Sprintf("streamer-%d", i+1), Addr: "127.0.0.1:0", Rate: rate, Standby: true})
		if err != nil {
			return err
		}
		nsess, err := adm.WaitSession(int32(next.Pid()), 20*time.Second)
		if err != nil {
			return err
		}
		client.ResetStall()
		mark = client.Mark()
		res, err := adm.Migrate(admin.Request{From: sess.ID, To: nsess.ID}, nil)
		r := row{n: i, from: cur.Pid(), to: next.Pid(), err: err}
		if res != nil {
			r.res = *res
		}
		if err != nil {
			return fmt.Errorf("migration %d: %w", i, err)
		}
		if res.Phase != "Completed" {
			return fmt.Errorf("migration %d %s: %s: %s", i, res.Phase, res.Reason, res.Message)
		}
		if err := next.WaitServing(20 * time.Second); err != nil {
			return err
		}
		if err := cur.Wait(20 * time.Second); err != nil {
			return fmt.Errorf("old streamer after migration %d: %w", i, err)
		}
		// Every stream must receive bytes from the new process.
		if err := client.WaitAdvanced(ctx, mark, int64(rate/10)); err != nil {
			return fmt.Errorf("streams did not resume after migration %d: %w", i, err)
		}
		r.stall = client.Snapshot().LongestStall
		r.afterStats = client.Snapshot()
		rows = append(rows, r)
		step("migration %d: pid %d → pid %d: %d connections + %d listener moved in %d batches, pause %v, total %v, longest client stall %v",
			i, r.from, r.to, res.Connections, res.Listeners, res.Batches, res.Pause().Round(10*time.Microsecond), res.Duration().Round(10*time.Microsecond), r.stall.Round(time.Millisecond))
		if f := r.afterStats.Failures(); len(f) > 0 {
			return fmt.Errorf("clients failed after migration %d:\n  %s", i, strings.Join(f, "\n  "))
		}
		cur, sess = next, nsess
	}
	// A last stretch of streaming from the final process.
	if err := client.WaitAdvanced(ctx, client.Mark(), int64(rate/4)); err != nil {
		return err
	}
	stats := client.Stop()

	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "migration\tfrom pid\tto pid\tconnections\tfds moved\tbatches\tstate bytes\tpause\ttotal\tlongest client stall\t")
	for _, r := range rows {
		fds := r.res.Connections + r.res.Listeners + r.res.Packets
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t%d\t%v\t%v\t%v\t\n", r.n, r.from, r.to, r.res.Connections, fds, r.res.Batches, r.res.StateBytes,
			r.res.Pause().Round(10*time.Microsecond), r.res.Duration().Round(10*time.Microsecond), r.stall.Round(time.Millisecond))
	}
	tw.Flush()
	fmt.Println()
	kept := stats.Alive
	fmt.Printf("connections kept   %d/%d\n", kept, stats.Streams)
	fmt.Printf("resets             %d\n", stats.Resets)
	fmt.Printf("bytes verified     %s (lost, duplicated or corrupted: %d)\n", loadclient.FormatBytes(stats.BytesVerified), stats.Mismatches)
	fmt.Printf("short connections  %d ok, %d failed\n", stats.ShortOK, stats.ShortFailed)
	fmt.Printf("elapsed            %v\n", time.Since(start).Round(time.Millisecond))
	if f := stats.Failures(); len(f) > 0 || kept != stats.Streams {
		return fmt.Errorf("client checks failed:\n  %s", strings.Join(f, "\n  "))
	}
	fmt.Println("\ndemo PASSED: every connection survived every migration with every byte verified")
	return nil
}

// streamerAddr reads the address from the streamer's "serving on" line.
func streamerAddr(p *harness.Proc) (string, error) {
	if p.ServingLine == "" {
		return "", fmt.Errorf("streamer %d did not report its address", p.Pid())
	}
	f := strings.Fields(p.ServingLine)
	for i, w := range f {
		if w == "on" && i+1 < len(f) {
			return f[i+1], nil
		}
	}
	return "", fmt.Errorf("cannot parse the streamer's address from %q", p.ServingLine)
}
