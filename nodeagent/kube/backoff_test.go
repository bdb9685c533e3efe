package kube

import (
	"testing"
	"time"
)

// TestRestartBackoff replays in-place updates A → B → A → B → A of one
// container, a few seconds apart, as kubelet sees them: the first start of
// an image after an exited instance opens a 10 s window for it; starting
// the same image again while the last instance stopped less than that ago
// would be held back, so the model says wait; each start doubles.
func TestRestartBackoff(t *testing.T) {
	var b restartBackoff
	t0 := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	A := backoffKey{pod: "p", container: "c", image: "a"}
	B := backoffKey{pod: "p", container: "c", image: "b"}
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	steps := []struct {
		key      backoffKey
		now      float64
		lastExit float64 // -1: no exited instance kept
		wait     float64 // seconds
	}{
		{B, 3, -1, 0}, // u1: nothing exited yet: kubelet does not look
		{A, 6, 3, 0},  // u2: A0 exited at 3; no entry for A: start, A gets 10 s
		{B, 9, 6, 0},  // u3: no entry for B: start, B gets 10 s
		{A, 12, 9, 9 + 10 - 12 + backoffMargin.Seconds()}, // u4: A's entry, last exit 3 s ago: would back off
	}
	for i, s := range steps {
		var last time.Time
		if s.lastExit >= 0 {
			last = at(s.lastExit)
		}
		got := b.wait(s.key, last, at(s.now))
		want := time.Duration(s.wait * float64(time.Second))
		if got != want {
			t.Fatalf("update %d (%s at %vs): wait %v, want %v", i+1, s.key.image, s.now, got, want)
		}
		b.started(s.key, last, at(s.now))
	}
	// u4 started (recorded at 12 s here): A doubles to 20 s.
	if w := b.wait(A, at(25), at(26)); w != 20*time.Second-time.Second+backoffMargin {
		t.Fatalf("A again 1 s after an exit: wait %v, want 20 s less 1 s plus the margin", w)
	}
	// Another container, pod or image is not held back.
	if w := b.wait(backoffKey{pod: "q", container: "c", image: "a"}, at(25), at(26)); w != 0 {
		t.Fatalf("another pod waits %v", w)
	}
	// Ten minutes after the entry's last update it has expired.
	if w := b.wait(A, at(12+601), at(12+602)); w != 0 {
		t.Fatalf("an expired entry still waits %v", w)
	}
}
