package nodeagent

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Peer is a session's identity as the kernel reports it, never as the
// peer claims it.
type Peer struct {
	PID      int32
	UID, GID uint32
	// PIDFD refers to the peer process itself, so a recycled pid cannot
	// be mistaken for it later; -1 if the kernel offers none.
	PIDFD int
	// FromPeerPIDFD says the pidfd came from SO_PEERPIDFD (race-free)
	// rather than pidfd_open after SO_PEERCRED.
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

// PeerOf asks the kernel who is at the other end of uc. It prefers
// SO_PEERPIDFD (Linux 6.5+), which names the process that connected even
// if it has exited; else it takes SO_PEERCRED and opens a pidfd at once,
// then checks the credentials again so a pid recycled in between is
// detected.
func PeerOf(uc *net.UnixConn) (Peer, error) {
	p := Peer{PIDFD: -1}
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
		pfd, err := unix.PidfdOpen(int(cred.Pid), 0)
		if err != nil {
			serr = fmt.Errorf("pidfd_open(%d): %w", cred.Pid, err)
			return
		}
		again, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil || again.Pid != cred.Pid || unix.PidfdSendSignal(pfd, 0, nil, 0) != nil {
			unix.Close(pfd)
			serr = fmt.Errorf("peer pid %d exited while being identified", cred.Pid)
			return
		}
		p.PIDFD = pfd
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
