package nodeagent

import (
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/wire"
)

// openFDs counts this process's open descriptors, the agent's among them.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestDeliverRacesFinish delivers messages carrying descriptors to
// transactions while they finish, as session readers do when a
// transaction ends under them: every descriptor must be closed, whether
// the message arrived before the end (drained by finish) or after
// (closed by deliver). A deliver that chose the channel after finish had
// drained it left its descriptors open for good.
func TestDeliverRacesFinish(t *testing.T) {
	a := New(Config{})
	base := openFDs(t)
	for range 500 {
		tx := a.newTxn()
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var p [2]int
				if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
					t.Error(err)
					return
				}
				tx.deliver(event{msg: wire.Msg{FDs: p[:]}})
			}()
		}
		tx.finish()
		wg.Wait()
	}
	if n := openFDs(t); n != base {
		t.Fatalf("%d descriptors open after 500 transactions ended under deliveries, %d before: deliver left some in a finished transaction", n, base)
	}
}
