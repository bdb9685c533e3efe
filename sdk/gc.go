package handoff

import (
	"time"

	"github.com/handoff-dev/handoff/internal/gchold"
)

// gcHoldMax bounds how long a handoff holds the garbage collector off
// (see internal/gchold): a handoff that waits longer than this (on a
// target that warms up for seconds, say) is not worth memory growing
// without a collection.
const gcHoldMax = time.Second

// holdGC turns the collector off for the pause; see gchold.Hold.
func holdGC(max time.Duration) (release func()) { return gchold.Hold(max) }
