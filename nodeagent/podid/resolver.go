package podid

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Resolver maps a peer process to its pod and container. pidfd is the
// peer's pidfd (nodeagent.Peer.PIDFD), or -1 when the kernel gave none.
type Resolver interface {
	Resolve(pid int32, pidfd int) (Identity, error)
}

// DefaultProcRoot is where the agent, running with hostPID, sees the
// host's processes.
const DefaultProcRoot = "/proc"

// ProcResolver is the Resolver that reads the kernel's own account in
// <procRoot>/<pid>/cgroup. It keeps no state and is safe for concurrent
// use.
type ProcResolver struct {
	procRoot string
}

var _ Resolver = (*ProcResolver)(nil)

// NewResolver returns a ProcResolver reading procRoot ("" means
// DefaultProcRoot; a host mount such as "/host/proc" when the agent's own
// /proc is not the host pid namespace's). The pids given to Resolve must
// be numbered in that procfs's pid namespace.
func NewResolver(procRoot string) *ProcResolver {
	if procRoot == "" {
		procRoot = DefaultProcRoot
	}
	return &ProcResolver{procRoot: procRoot}
}

// Resolve reads pid's cgroup membership and parses it with
// ParseProcCgroup. With a pidfd (>= 0) it then checks that the pidfd
// still names pid and that the process is alive, so the file it read
// cannot have been a later process's that was given the same pid; a dead
// one yields ErrProcessExited. Without a pidfd that race is the caller's
// to close.
func (r *ProcResolver) Resolve(pid int32, pidfd int) (Identity, error) {
	if pid <= 0 {
		return Identity{}, fmt.Errorf("pod identity of pid %d: not a process id", pid)
	}
	file := filepath.Join(r.procRoot, strconv.Itoa(int(pid)), "cgroup")
	data, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return Identity{}, fmt.Errorf("pod identity of pid %d: %w: %w", pid, ErrProcessExited, err)
		}
		return Identity{}, fmt.Errorf("pod identity of pid %d: %w", pid, err)
	}
	if pidfd >= 0 {
		if err := r.checkPidfd(pid, pidfd); err != nil {
			return Identity{}, fmt.Errorf("pod identity of pid %d: %w", pid, err)
		}
	}
	id, err := ParseProcCgroup(data)
	if err != nil {
		return Identity{}, fmt.Errorf("pod identity of pid %d: %w", pid, err)
	}
	return id, nil
}

// checkPidfd runs after the read: a process that is still alive still
// holds its pid, so what was read was its.
func (r *ProcResolver) checkPidfd(pid int32, pidfd int) error {
	switch err := unix.PidfdSendSignal(pidfd, 0, nil, 0); {
	case err == nil:
	case errors.Is(err, unix.EPERM):
		// The kernel found the process before refusing the signal.
	case errors.Is(err, unix.ESRCH):
		return fmt.Errorf("pidfd %d: %w while its cgroup was read (the pid may name another process now)", pidfd, ErrProcessExited)
	default:
		return fmt.Errorf("pidfd %d: pidfd_send_signal: %w", pidfd, err)
	}
	// A caller that pairs a pidfd with the wrong pid would otherwise get
	// a live check of one process and the identity of another.
	fdPid, err := r.pidfdPid(pidfd)
	if err != nil {
		return err
	}
	switch {
	case fdPid == -1: // reaped since the signal check
		return fmt.Errorf("pidfd %d: %w while its cgroup was read (the pid may name another process now)", pidfd, ErrProcessExited)
	case fdPid == 0:
		return fmt.Errorf("pidfd %d refers to a process outside the pid namespace of %s", pidfd, r.procRoot)
	case fdPid != pid:
		return fmt.Errorf("pidfd %d refers to pid %d, not %d", pidfd, fdPid, pid)
	}
	return nil
}

// pidfdPid reads the "Pid:" line of the pidfd's fdinfo, numbered in the
// pid namespace of the procfs read (Linux 5.3+).
func (r *ProcResolver) pidfdPid(pidfd int) (int32, error) {
	file := filepath.Join(r.procRoot, "self", "fdinfo", strconv.Itoa(pidfd))
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("pidfd %d: %w", pidfd, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		v, ok := bytes.CutPrefix(sc.Bytes(), []byte("Pid:"))
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 32)
		if err != nil {
			return 0, fmt.Errorf("pidfd %d: %s: bad Pid line %q: %w", pidfd, file, sc.Text(), err)
		}
		return int32(n), nil
	}
	return 0, fmt.Errorf("pidfd %d: %s has no Pid line (not a pidfd?)", pidfd, file)
}
