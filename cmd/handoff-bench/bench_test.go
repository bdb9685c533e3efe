package main

import (
	"os"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/examples/streamer/loadclient"
)

// TestMain lets the test binary play the roles the benchmark re-executes
// itself in.
func TestMain(m *testing.M) {
	if role := os.Getenv(floorRoleEnv); role != "" {
		floorChild(role)
		return
	}
	os.Exit(m.Run())
}

// TestFloor moves real sockets through the source, peer, relay and sink
// processes, one and two hops.
func TestFloor(t *testing.T) {
	fl, err := measureFloor(600, 1)
	if err != nil {
		t.Fatal(err)
	}
	if fl.oneHop <= 0 || fl.twoHop <= 0 || len(fl.ones) != 1 || len(fl.twos) != 1 {
		t.Fatalf("floor %+v", fl)
	}
}

func TestAnalyseEcho(t *testing.T) {
	ms := func(n int64) int64 { return n * int64(time.Millisecond) }
	ws := []window{{quietFrom: ms(0), quietTo: ms(100), from: ms(200), to: ms(300)}}
	trips := []loadclient.RoundTrip{
		{Sent: ms(10), Received: ms(11)},   // quiet
		{Sent: ms(95), Received: ms(105)},  // crosses the quiet window's end: neither
		{Sent: ms(150), Received: ms(160)}, // between: neither
		{Sent: ms(190), Received: ms(230)}, // in flight when the migration began: during
		{Sent: ms(250), Received: ms(252)}, // during
		{Sent: ms(299), Received: ms(350)}, // sent before its end: during
		{Sent: ms(300), Received: ms(301)}, // after: neither
	}
	r := analyseEcho(trips, ws)
	if len(r.quiet) != 1 || r.quiet[0] != time.Millisecond {
		t.Errorf("quiet %v, want [1ms]", r.quiet)
	}
	if want := []time.Duration{2 * time.Millisecond, 40 * time.Millisecond, 51 * time.Millisecond}; len(r.during) != 3 || r.during[0] != want[0] || r.during[1] != want[1] || r.during[2] != want[2] {
		t.Errorf("during %v, want %v", r.during, want)
	}
	if len(r.worst) != 1 || r.worst[0] != 51*time.Millisecond {
		t.Errorf("worst %v, want [51ms]", r.worst)
	}
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if quantile(d, 0.5) != 5 || quantile(d, 0.99) != 10 || quantile(d, 1) != 10 || quantile(nil, 0.5) != 0 {
		t.Errorf("quantiles of 1..10: %v %v %v", quantile(d, 0.5), quantile(d, 0.99), quantile(d, 1))
	}
}
