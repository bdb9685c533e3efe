package fdlimit

import (
	"syscall"
	"testing"
)

func TestRaise(t *testing.T) {
	var before syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	// Lower the soft limit first so that Raise has something to do.
	if before.Cur > 64 {
		low := before
		low.Cur = 64
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
			t.Fatal(err)
		}
	}
	soft, hard, err := Raise()
	if err != nil {
		t.Fatalf("Raise: %v", err)
	}
	if soft != hard || hard != before.Max {
		t.Fatalf("Raise = (%d, %d), want soft = hard = %d", soft, hard, before.Max)
	}
	var after syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &after); err != nil {
		t.Fatal(err)
	}
	if after.Cur != soft {
		t.Fatalf("soft limit is %d, Raise reported %d", after.Cur, soft)
	}
	// Idempotent.
	if s2, h2, err := Raise(); err != nil || s2 != soft || h2 != hard {
		t.Fatalf("second Raise = (%d, %d, %v)", s2, h2, err)
	}
}
