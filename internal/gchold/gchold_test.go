package gchold

import (
	"runtime/debug"
	"testing"
	"time"
)

// gcPercent reads the collector's setting without changing it.
func gcPercent() int {
	p := debug.SetGCPercent(-1)
	debug.SetGCPercent(p)
	return p
}

func TestHoldNestsAndRestores(t *testing.T) {
	orig := debug.SetGCPercent(150)
	defer debug.SetGCPercent(orig)

	r1 := Hold(time.Hour)
	r2 := Hold(time.Hour)
	if p := gcPercent(); p != -1 {
		t.Fatalf("GC percent while held = %d, want -1", p)
	}
	r1()
	r1() // a second call is a no-op, not a second release
	if p := gcPercent(); p != -1 {
		t.Fatalf("GC percent with one hold left = %d, want -1", p)
	}
	r2()
	if p := gcPercent(); p != 150 {
		t.Fatalf("GC percent after the last release = %d, want 150", p)
	}
}

func TestHoldEndsByItself(t *testing.T) {
	orig := debug.SetGCPercent(150)
	defer debug.SetGCPercent(orig)

	release := Hold(time.Millisecond)
	defer release()
	deadline := time.Now().Add(10 * time.Second)
	for gcPercent() != 150 {
		if time.Now().After(deadline) {
			t.Fatal("the hold did not end by itself")
		}
		time.Sleep(time.Millisecond)
	}
}
