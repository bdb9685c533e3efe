package handoff_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/wire"
)

// TestPrecopyVersions migrates a streamer under load between processes
// that offer different protocol versions: the pre-copy runs only when
// both agreed on version 3 with the agent, and an older peer on either
// side still migrates, without one, losing nothing.
func TestPrecopyVersions(t *testing.T) {
	for _, tc := range []struct{ src, dst int }{{3, 3}, {2, 3}, {3, 2}, {1, 1}} {
		t.Run(fmt.Sprintf("source v%d target v%d", tc.src, tc.dst), func(t *testing.T) {
			const streams = 100
			f := setupSource(t, streams, fmt.Sprintf("MAX_VERSION=%d", tc.src))
			dst := startStreamer(t, f.ta.socket, true, fmt.Sprintf("MAX_VERSION=%d", tc.dst))
			ds := f.ta.join(t, dst.pid)
			res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, faultMigrateTimeout, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantTakeover(t, res, dst, streams, "")
			precopy := tc.src == 3 && tc.dst == 3
			switch {
			case precopy && res.Copies < streams+1:
				t.Fatalf("pre-copy sent %d copies, want the listener and at least the %d streams", res.Copies, streams)
			case !precopy && res.Copies != 0:
				t.Fatalf("%d copies between versions %d and %d: a pre-copy needs both on version 3", res.Copies, tc.src, tc.dst)
			}
			t.Logf("moved %d connections, %d copies (%d dropped), pause %v, pre-copy %v", res.Connections, res.Copies, res.Dropped, res.Pause(), time.Duration(res.PrecopyNS))
			f.checkStreamsCarriedOn(t)
		})
	}
}

// TestPrecopyChurn holds the source between its pre-copy and its freeze
// for a while under a steady stream of new short connections: some
// copies are closed before the freeze (dropped), some connections are
// accepted after the copies were taken (sent in ordinary batches), and
// every stream and every short connection keeps every byte.
func TestPrecopyChurn(t *testing.T) {
	const streams = 200
	f := setupSource(t, streams, "STALL_AT=precopied:400ms")
	f.load.startShort(t, f.src.addr, 200)
	dst := startStreamer(t, f.ta.socket, true)
	ds := f.ta.join(t, dst.pid)
	res, err := f.ta.Migrate(f.srcSes.ID, ds.ID, wire.MoveAll, faultMigrateTimeout, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantTakeover(t, res, dst, streams, "")
	kept := res.Copies - res.Dropped
	fresh := res.Connections + res.Listeners - kept
	t.Logf("copies %d, dropped %d, sent after the freeze %d; moved %d connections, pause %v, pre-copy %v",
		res.Copies, res.Dropped, fresh, res.Connections, res.Pause(), time.Duration(res.PrecopyNS))
	if res.Dropped == 0 || fresh == 0 {
		t.Fatalf("no churn between the pre-copy and the freeze (%d dropped, %d sent after): the test did not test it", res.Dropped, fresh)
	}
	f.checkStreamsCarriedOn(t)
}
