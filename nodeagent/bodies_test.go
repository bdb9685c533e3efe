package nodeagent

import (
	"testing"

	"github.com/handoff-dev/handoff/wire"
)

// A relayed body's memory serves the next body; small bodies and foreign
// slices stay out of the pool, and the pool stays bounded.
func TestBodiesRecycle(t *testing.T) {
	var p bodies
	a := p.get(5000)
	if len(a) != 5000 || cap(a) != wire.MaxBody {
		t.Fatalf("got len %d cap %d", len(a), cap(a))
	}
	p.put(a)
	b := p.get(wire.MaxBody)
	if &b[0] != &a[0] || len(b) != wire.MaxBody {
		t.Fatal("a body handed back was not reused")
	}
	if s := p.get(10); len(s) != 10 || cap(s) == wire.MaxBody {
		t.Fatalf("a small body came from the pool: cap %d", cap(s))
	}
	p.put(make([]byte, 100))
	if len(p.free) != 0 {
		t.Fatal("a slice the pool did not make was kept")
	}
	for range maxFree + 10 {
		p.put(make([]byte, 0, wire.MaxBody))
	}
	if len(p.free) != maxFree {
		t.Fatalf("%d buffers kept, want at most %d", len(p.free), maxFree)
	}
}
