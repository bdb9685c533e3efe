package nodeagent

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Peer is a session's identity as the kernel reports it, never as the
// peer claims it.
type Peer struct {
	PID      int32
	UID, GID uint32
	// PIDFD refers to one process for as long as it is open, so a pid
	// recycled later cannot be mistaken for it; -1 if the kernel offers
	// none. Which process: see FromPeerPIDFD.
	PIDFD int
	// FromPeerPIDFD says the pidfd came from SO_PEERPIDFD, which names the
	// process that connected, exactly. Otherwise it came from pidfd_open
	// of the pid SO_PEERCRED reported, checked as pidfdOfPeer describes.
	FromPeerPIDFD bool
}

// Close releases the pidfd.
func (p *Peer) Close() {
	if p.PIDFD >= 0 {
		unix.Close(p.PIDFD)
		p.PIDFD = -1
	}
}

// Alive reports whether the peer process still exists.
func (p *Peer) Alive() bool {
	if p.PIDFD < 0 {
		return unix.Kill(int(p.PID), 0) == nil
	}
	return unix.PidfdSendSignal(p.PIDFD, 0, nil, 0) == nil
}

// PeerOf asks the kernel who is at the other end of uc. The pid, uid and
// gid are SO_PEERCRED's: those of the process that called connect(), as
// they were then. The pidfd comes from SO_PEERPIDFD (Linux 6.5+), which
// names that same process even if it has exited since; on older kernels
// it falls back to pidfdOfPeer, which is weaker (see there).
func PeerOf(uc *net.UnixConn) (Peer, error) {
	p := Peer{PIDFD: -1}
	// The peer connected before the agent got here: a process that
	// started after this instant cannot be it.
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &now); err != nil {
		return p, fmt.Errorf("peer identity: CLOCK_BOOTTIME: %w", err)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return p, fmt.Errorf("peer identity: %w", err)
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			serr = fmt.Errorf("SO_PEERCRED: %w", err)
			return
		}
		p.PID, p.UID, p.GID = cred.Pid, cred.Uid, cred.Gid
		if pfd, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			p.PIDFD, p.FromPeerPIDFD = pfd, true
			return
		} else if !errors.Is(err, unix.ENOPROTOOPT) && !errors.Is(err, unix.EINVAL) {
			serr = fmt.Errorf("SO_PEERPIDFD: %w", err)
			return
		}
		p.PIDFD, serr = pidfdOfPeer(cred.Pid, now.Nano())
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		p.Close()
		return Peer{PIDFD: -1}, fmt.Errorf("peer identity: %w", err)
	}
	if p.PID <= 0 {
		p.Close()
		return Peer{PIDFD: -1}, fmt.Errorf("peer identity: the kernel reports no pid (peer in another pid namespace?)")
	}
	return p, nil
}

// userHZ is the unit of start times in /proc/<pid>/stat: USER_HZ, 100 on
// every architecture Go supports on Linux.
const userHZ = 100

// pidfdOfPeer opens a pidfd for the process that now has the pid
// SO_PEERCRED reported for a connection made no later than notAfterNS
// (CLOCK_BOOTTIME), and checks that this process had already started
// then.
//
// SO_PEERCRED is fixed at connect() and says nothing about what the pid
// names today: if the peer exited, its pid may have gone to another
// process. The check refuses a process the kernel says started after
// notAfterNS, which cannot be the peer. It cannot tell the peer from a
// process that reused its pid and started between the peer's connect()
// and notAfterNS (plus up to one USER_HZ tick, the start time's
// resolution); only SO_PEERPIDFD closes that window. Whatever the pidfd
// names, PID, UID and GID remain the connecting process's.
func pidfdOfPeer(pid int32, notAfterNS int64) (int, error) {
	pfd, err := unix.PidfdOpen(int(pid), 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	start, err := startTime(pid)
	if err == nil && !pidfdAlive(pfd) {
		// Read after pidfd_open, and the pidfd's process still holds
		// the pid after the read: the start time is that process's.
		err = fmt.Errorf("peer pid %d exited while being identified", pid)
	}
	if err == nil && start > notAfterNS {
		err = fmt.Errorf("pid %d now names a process that started after the connection: the peer exited and its pid was reused", pid)
	}
	if err != nil {
		unix.Close(pfd)
		return -1, err
	}
	return pfd, nil
}

// pidfdAlive reports whether the pidfd's process has not been reaped, so
// that it still holds its pid. EPERM means it exists but the agent may
// not signal it.
func pidfdAlive(pfd int) bool {
	err := unix.PidfdSendSignal(pfd, 0, nil, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// startTime is when the process with pid started, in CLOCK_BOOTTIME
// nanoseconds rounded down to the USER_HZ tick /proc reports.
func startTime(pid int32) (int64, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("start time of pid %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold anything but ends at
	// the last ')'; starttime is the 22nd field, the 20th after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("start time of pid %d: %s has no command name", pid, path)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("start time of pid %d: %s has %d fields after the command name, want 20 or more", pid, path, len(f))
	}
	ticks, err := strconv.ParseInt(string(f[19]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("start time of pid %d: %w", pid, err)
	}
	return ticks * (1e9 / userHZ), nil
}
