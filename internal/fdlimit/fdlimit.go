// Package fdlimit raises the process's open-file limit, which servers and
// load clients holding thousands of sockets need.
package fdlimit

import (
	"fmt"
	"syscall"
)

// Raise sets the soft RLIMIT_NOFILE to the hard limit and returns the
// resulting soft and hard limits. It does not try to raise the hard limit.
func Raise() (soft, hard uint64, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, fmt.Errorf("fdlimit: get RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		want := lim
		want.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return lim.Cur, lim.Max, fmt.Errorf("fdlimit: raise RLIMIT_NOFILE soft limit from %d to %d: %w", lim.Cur, lim.Max, err)
		}
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, 0, fmt.Errorf("fdlimit: get RLIMIT_NOFILE: %w", err)
		}
	}
	return lim.Cur, lim.Max, nil
}
