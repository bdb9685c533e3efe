package handoff

import (
	"fmt"
	"testing"
)

// TestTrackListOrder checks that the tracked connections come out oldest
// first after removals at the front, the back and in the middle, after
// the gaps are closed, and that removing a connection twice changes
// nothing.
func TestTrackListOrder(t *testing.T) {
	var l trackList
	ts := make([]*Tracked, 6)
	for i := range ts {
		ts[i] = &Tracked{family: string(rune('a' + i))}
		l.push(ts[i])
	}
	order := func() string {
		var s []byte
		all := l.appendTo(nil)
		for _, x := range all {
			s = append(s, x.family...)
		}
		if len(all) != l.n {
			t.Fatalf("listed %d connections, count says %d", len(all), l.n)
		}
		return string(s)
	}
	if got := order(); got != "abcdef" {
		t.Fatalf("order %q, want abcdef", got)
	}
	l.remove(ts[0]) // front
	l.remove(ts[5]) // back
	l.remove(ts[2]) // middle
	l.remove(ts[2]) // again
	if got := order(); got != "bde" {
		t.Fatalf("order after removals %q, want bde", got)
	}
	l.push(ts[2])
	if got := order(); got != "bdec" {
		t.Fatalf("order after tracking c again %q, want bdec", got)
	}
	for _, x := range ts {
		l.remove(x)
	}
	if got := order(); got != "" {
		t.Fatalf("list not empty: %q", got)
	}

	// Many removals close the gaps; what is left keeps its order and can
	// still be removed.
	var many []*Tracked
	for i := range 1000 {
		x := &Tracked{family: fmt.Sprint(i)}
		many = append(many, x)
		l.push(x)
	}
	for i, x := range many {
		if i%10 != 0 {
			l.remove(x)
		}
	}
	if len(l.ts) > 2*l.n {
		t.Fatalf("%d slots for %d connections: the gaps were not closed", len(l.ts), l.n)
	}
	all := l.appendTo(nil)
	if len(all) != 100 {
		t.Fatalf("%d connections left, want 100", len(all))
	}
	for i, x := range all {
		if x != many[10*i] {
			t.Fatalf("connection %d is %s, want %d", i, x.family, 10*i)
		}
		l.remove(x)
	}
	if l.n != 0 || len(l.appendTo(nil)) != 0 {
		t.Fatalf("%d connections left after removing all", l.n)
	}
}
