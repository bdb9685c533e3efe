package handoff_test

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	handoff "github.com/handoff-dev/handoff/sdk"
)

// applyChildFaults arms the faults a test asked the child for:
// CRASH_AT=step kills the process with SIGKILL at that protocol step,
// STALL_AT=step:duration stalls it there, NOFILE=n lowers its open-file
// limit so the import meets EMFILE, HOLD_AT=step:path holds the process
// at that step until the test creates path (or, with HOLD_UNTIL=step2,
// until this process reaches step2 on another goroutine), STOP_AT=step
// stops it there with SIGSTOP.
func applyChildFaults() {
	crash := os.Getenv("CRASH_AT")
	stop := os.Getenv("STOP_AT")
	holdAt, holdPath, _ := strings.Cut(os.Getenv("HOLD_AT"), ":")
	holdUntil := os.Getenv("HOLD_UNTIL")
	released := make(chan struct{})
	var release sync.Once
	stallAt, stallFor := "", time.Duration(0)
	if s := os.Getenv("STALL_AT"); s != "" {
		for i := range s {
			if s[i] == ':' {
				stallAt = s[:i]
				stallFor, _ = time.ParseDuration(s[i+1:])
			}
		}
	}
	if crash != "" || stallAt != "" || holdAt != "" || stop != "" || holdUntil != "" {
		handoff.SetTestHook(func(step string) {
			if step == holdUntil {
				release.Do(func() { close(released) })
			}
			if step == crash {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
			if step == stop {
				// Signal this thread, not the process: a process-wide
				// SIGSTOP is taken by whichever thread the kernel picks,
				// and under load this one ran on for milliseconds first.
				runtime.LockOSThread()
				syscall.Tgkill(os.Getpid(), syscall.Gettid(), syscall.SIGSTOP)
				runtime.UnlockOSThread()
			}
			if step == holdAt {
				fmt.Printf("HELD %s\n", step)
				if holdUntil != "" {
					select {
					case <-released:
					case <-time.After(20 * time.Second):
					}
					return
				}
				// Bounded poll for the test's go-ahead.
				for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
					if _, err := os.Stat(holdPath); err == nil {
						break
					}
				}
			}
			if step == stallAt {
				time.Sleep(stallFor) // the fault itself: a process stuck at this step
			}
		})
	}
	if v, err := strconv.Atoi(os.Getenv("MAX_VERSION")); err == nil {
		handoff.SetMaxVersion(uint16(v))
	}
	if n, err := strconv.Atoi(os.Getenv("NOFILE")); err == nil {
		lim := syscall.Rlimit{Cur: uint64(n), Max: uint64(n)}
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}
