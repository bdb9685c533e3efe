package server

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestGoPool hands functions to prepared goroutines: each runs exactly
// once, no more than the pool holds are taken, and closing the pool
// releases the workers still waiting.
func TestGoPool(t *testing.T) {
	if newGoPool(0) != nil || newGoPool(-1) != nil {
		t.Fatal("a pool of no goroutines")
	}
	var nilPool *goPool
	if nilPool.run(func() {}) {
		t.Fatal("a nil pool ran a function")
	}
	nilPool.close()

	p := newGoPool(4)
	var ran atomic.Int32
	done := make(chan struct{}, 3)
	deadline := time.Now().Add(10 * time.Second)
	for range 3 {
		// A worker may not have reached its wait yet: retry until one has.
		for !p.run(func() { ran.Add(1); done <- struct{}{} }) {
			if time.Now().After(deadline) {
				t.Fatal("no worker of the pool took a function")
			}
		}
	}
	for range 3 {
		<-done
	}
	if got := ran.Load(); got != 3 {
		t.Fatalf("%d functions ran, want 3", got)
	}
	p.close()
	p.close()     // twice is harmless
	p.done.Wait() // the fourth worker was released
	if p.run(func() { t.Error("ran on a closed pool") }) {
		t.Fatal("a closed pool took a function")
	}
}
