package wire

import (
	"golang.org/x/sys/unix"
)

// MaxFDTableReserve caps how far ReserveFDTable grows the table.
const MaxFDTableReserve = 1 << 16

// ReserveFDTable grows this process's descriptor table up front so that
// receiving thousands of descriptors later does not grow it on the way.
// Growing the table of a multi-threaded process (every Go program) waits
// for an RCU grace period per doubling — milliseconds each on a VM — so a
// process about to receive a handoff does it while it still waits, not
// during the pause. It grows to the soft RLIMIT_NOFILE, at most
// MaxFDTableReserve, by duplicating a descriptor to the highest slot and
// closing it again; the kernel never shrinks the table.
func ReserveFDTable() (int, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	top := int(min(lim.Cur, MaxFDTableReserve)) - 1
	if top < 64 {
		return 0, nil
	}
	err := unix.Dup3(0, top, unix.O_CLOEXEC)
	if err != nil {
		// fd 0 may be closed; any descriptor will do.
		p, perr := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if perr != nil {
			return 0, err
		}
		defer unix.Close(p)
		if err = unix.Dup3(p, top, unix.O_CLOEXEC); err != nil {
			return 0, err
		}
	}
	unix.Close(top)
	return top + 1, nil
}
