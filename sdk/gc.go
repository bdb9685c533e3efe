package handoff

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// The garbage collector is held off while a handoff pauses the
// connections: a collection that starts then (the export's allocations
// are what tips the heap over its goal) scans every goroutine's stack
// and took a fifth of the source's CPU during the freeze. What the pause
// allocates is small and bounded; the collection runs right after.
//
// Holds nest, so that two Process values in one program (a test, a
// process migrating to itself) share one saved setting.
var gcHold struct {
	sync.Mutex
	n     int
	saved int
}

// gcHoldMax bounds a hold: a handoff that waits longer than this (on a
// target that warms up for seconds, say) is not worth memory growing
// without a collection.
const gcHoldMax = time.Second

// holdGC turns the garbage collector off until the returned function is
// called or max has passed; a memory limit (GOMEMLIMIT) still applies. A
// collection already marking is finished first, so call it before the
// pause starts.
func holdGC(max time.Duration) (release func()) {
	gcHold.Lock()
	if gcHold.n == 0 {
		gcHold.saved = debug.SetGCPercent(-1)
	}
	gcHold.n++
	gcHold.Unlock()
	var once sync.Once
	var timer atomic.Pointer[time.Timer] // the timer may fire before it is stored
	release = func() {
		once.Do(func() {
			if t := timer.Load(); t != nil {
				t.Stop()
			}
			gcHold.Lock()
			gcHold.n--
			if gcHold.n == 0 {
				debug.SetGCPercent(gcHold.saved)
			}
			gcHold.Unlock()
		})
	}
	timer.Store(time.AfterFunc(max, release))
	return release
}
