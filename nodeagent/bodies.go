package nodeagent

import (
	"sync"

	"github.com/handoff-dev/handoff/wire"
)

// bodies recycles the memory of relayed message bodies. A migration of
// thousands of connections is tens of batch bodies of up to 64 KiB each,
// copied out of the session's receive buffer because another goroutine
// sends them on. Allocated afresh, they started a collection in the agent
// during most transfers and touched fresh pages (about ten microseconds
// each on a virtual machine), all while clients wait. A relayed body is
// handed back once sent; any other body is simply left to the collector.
type bodies struct {
	mu   sync.Mutex
	free [][]byte
}

// minPooled is the smallest body taken from the pool: small messages are
// cheap to allocate and would each pin a whole buffer.
const minPooled = 1024

// maxFree bounds the buffers kept: a few migrations' batches in flight.
const maxFree = 64

// get returns n bytes for a body.
func (p *bodies) get(n int) []byte {
	if n < minPooled {
		return make([]byte, n)
	}
	p.mu.Lock()
	if k := len(p.free); k > 0 {
		b := p.free[k-1]
		p.free = p.free[:k-1]
		p.mu.Unlock()
		return b[:n]
	}
	p.mu.Unlock()
	return make([]byte, n, wire.MaxBody)
}

// put hands back a body nothing refers to any more.
func (p *bodies) put(b []byte) {
	if cap(b) != wire.MaxBody {
		return
	}
	p.mu.Lock()
	if len(p.free) < maxFree {
		p.free = append(p.free, b[:0])
	}
	p.mu.Unlock()
}
