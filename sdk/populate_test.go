package handoff

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// minorFaults is this process's count of page faults served without I/O.
func minorFaults(t *testing.T) int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		t.Fatal(err)
	}
	return ru.Minflt
}

// TestPopulateMapsPages writes one byte per page of fresh memory, once
// after populate and once without: populated pages must not fault.
func TestPopulateMapsPages(t *testing.T) {
	runtime.LockOSThread() // RUSAGE_THREAD counts this thread only
	defer runtime.UnlockOSThread()
	const pages = 256
	touch := func(b []byte) int64 {
		before := minorFaults(t)
		for i := 0; i < len(b); i += int(pageSize) {
			b[i] = 1
		}
		return minorFaults(t) - before
	}
	var plain, populated int64
	// Fresh memory of this size comes straight from the kernel.
	for range 3 {
		plain = touch(make([]byte, pages*int(pageSize)))
		populated = touch(makePopulated[byte](pages*int(pageSize), pages*int(pageSize)))
		if plain >= pages/2 && populated < pages/8 {
			return
		}
	}
	if plain < pages/2 {
		t.Skipf("fresh memory faulted only %d times for %d pages (huge pages?): nothing to compare", plain, pages)
	}
	t.Fatalf("populated memory faulted %d times for %d pages (plain: %d)", populated, pages, plain)
}
