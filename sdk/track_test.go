package handoff

import (
	"slices"
	"testing"
)

// TestTrackListOrder checks that the tracked connections come out oldest
// first after removals at the head, the tail and in the middle, and that
// removing a connection twice changes nothing.
func TestTrackListOrder(t *testing.T) {
	var l trackList
	ts := make([]*Tracked, 6)
	for i := range ts {
		ts[i] = &Tracked{family: string(rune('a' + i))}
		l.push(ts[i])
	}
	order := func() string {
		var s []byte
		for x := l.head; x != nil; x = x.next {
			s = append(s, x.family...)
		}
		var back []byte
		for x := l.tail; x != nil; x = x.prev {
			back = append(back, x.family...)
		}
		slices.Reverse(back)
		if string(back) != string(s) {
			t.Fatalf("forward %q, backward %q", s, back)
		}
		if len(s) != l.n {
			t.Fatalf("walked %d connections, count says %d", len(s), l.n)
		}
		return string(s)
	}
	if got := order(); got != "abcdef" {
		t.Fatalf("order %q, want abcdef", got)
	}
	l.remove(ts[0]) // head
	l.remove(ts[5]) // tail
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
	if got := order(); got != "" || l.head != nil || l.tail != nil {
		t.Fatalf("list not empty: %q", got)
	}
}
