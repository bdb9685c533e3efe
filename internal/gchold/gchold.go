// Package gchold holds the garbage collector off while a handoff pauses
// connections, in the processes on both ends and in the agent between
// them.
//
// A collection that starts during the pause (the transfer's own
// allocations are what tip a heap over its goal) scans every goroutine's
// stack and sweeps every span while no client is served: it took a fifth
// of the source's CPU during the freeze, and in the agent's first
// migration after it started it tripled the agent's work. What a pause
// allocates is small and bounded; the collection runs right after.
package gchold

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Holds nest, so that two holders in one program (two Process values in
// a test, a process migrating to itself, concurrent migrations in the
// agent) share one saved setting.
var held struct {
	sync.Mutex
	n     int
	saved int
}

// Hold turns the garbage collector off until the returned function is
// called (once or more) or max has passed; a memory limit (GOMEMLIMIT)
// still applies. A collection already marking is finished first, so call
// it before the pause starts.
func Hold(max time.Duration) (release func()) {
	held.Lock()
	if held.n == 0 {
		held.saved = debug.SetGCPercent(-1)
	}
	held.n++
	held.Unlock()
	var once sync.Once
	var timer atomic.Pointer[time.Timer] // the timer may fire before it is stored
	release = func() {
		once.Do(func() {
			if t := timer.Load(); t != nil {
				t.Stop()
			}
			held.Lock()
			held.n--
			if held.n == 0 {
				debug.SetGCPercent(held.saved)
			}
			held.Unlock()
		})
	}
	timer.Store(time.AfterFunc(max, release))
	return release
}
