package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/fdlimit"
	"github.com/handoff-dev/handoff/wire"
)

// The floor is what moving N sockets costs with nothing but sendmsg and
// recvmsg: a source process holding N established TCP sockets sends them
// in batches of 253 with SCM_RIGHTS, either straight to a sink (one hop)
// or through a relay that forwards each batch as it arrives (two hops, the
// shape of a migration through the agent). Each process is this binary
// re-executed in a role; they talk over socketpairs passed as fd 3 and 4.
// The client ends of the N connections live in a peer process of their
// own, which the source starts, so that no process holds more than N
// sockets and a few (N = 15000 fits a limit of 20000).

const floorRoleEnv = "HANDOFF_BENCH_FLOOR_ROLE"

type floorResult struct {
	oneHop, twoHop time.Duration // medians
	ones, twos     []time.Duration
}

// measureFloor runs reps one-hop and two-hop transfers of n sockets and
// returns the medians, and every run.
func measureFloor(n, reps int) (floorResult, error) {
	var one, two []time.Duration
	for range reps {
		d, err := floorRun(n, false)
		if err != nil {
			return floorResult{}, err
		}
		one = append(one, d)
		d, err = floorRun(n, true)
		if err != nil {
			return floorResult{}, err
		}
		two = append(two, d)
	}
	return floorResult{median(one), median(two), one, two}, nil
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func seqpair() (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	return os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b"), nil
}

// floorRun starts source, optional relay and sink; the sink prints the
// elapsed time from the source's first sendmsg (a CLOCK_MONOTONIC stamp
// the source sends ahead) to its last recvmsg.
func floorRun(n int, relay bool) (time.Duration, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	a1, a2, err := seqpair()
	if err != nil {
		return 0, err
	}
	var cmds []*exec.Cmd
	start := func(role string, files ...*os.File) (*exec.Cmd, error) {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), floorRoleEnv+"="+role, "N="+strconv.Itoa(n))
		cmd.ExtraFiles = files
		cmd.Stderr = os.Stderr
		cmds = append(cmds, cmd)
		return cmd, nil
	}
	src, _ := start("source", a1)
	var sink *exec.Cmd
	var b1, b2 *os.File
	if relay {
		b1, b2, err = seqpair()
		if err != nil {
			return 0, err
		}
		start("relay", a2, b1)
		sink, _ = start("sink", b2)
	} else {
		sink, _ = start("sink", a2)
	}
	out, err := sink.StdoutPipe()
	if err != nil {
		return 0, err
	}
	for _, c := range cmds {
		if err := c.Start(); err != nil {
			return 0, err
		}
	}
	for _, f := range []*os.File{a1, a2, b1, b2} {
		if f != nil {
			f.Close()
		}
	}
	var ns int64
	_, scanErr := fmt.Fscan(out, &ns)
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			return 0, fmt.Errorf("floor %v: %w", c.Env[len(c.Env)-2], err)
		}
	}
	_ = src
	if scanErr != nil {
		return 0, fmt.Errorf("floor sink printed no time: %w", scanErr)
	}
	return time.Duration(ns), nil
}

// floorChild runs one role of the floor measurement and exits.
func floorChild(role string) {
	fdlimit.Raise()
	// Pre-size the descriptor table, as the SDK does in standby: the floor
	// is the best that can be done, not a table growth per doubling.
	wire.ReserveFDTable()
	n, _ := strconv.Atoi(os.Getenv("N"))
	die := func(err error) {
		fmt.Fprintf(os.Stderr, "floor %s: %v\n", role, err)
		os.Exit(1)
	}
	switch role {
	case "peer":
		// The client ends of the source's connections: dial N times, say
		// so, and hold them until the source closes stdin.
		keep := make([]net.Conn, 0, n)
		for range n {
			c, err := net.Dial("tcp", os.Getenv("ADDR"))
			if err != nil {
				die(err)
			}
			// Reset rather than close: a run leaves no TIME_WAIT
			// sockets behind, which would otherwise hold up to the
			// kernel's 131072 for a minute (every floor run opens N
			// connections) while the streams are opened next.
			if err := c.(*net.TCPConn).SetLinger(0); err != nil {
				die(err)
			}
			keep = append(keep, c)
		}
		fmt.Println("connected")
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = keep
	case "source":
		// N established TCP sockets: the server ends move, the client
		// ends stay in the peer so the connections are real and alive.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			die(err)
		}
		peer, err := startPeer(n, ln.Addr().String())
		if err != nil {
			die(err)
		}
		// A peer that fails says so here, ending the accepts below.
		peerDone := make(chan struct{})
		go func() {
			if err := peer.connected(); err != nil {
				die(err)
			}
			close(peerDone)
		}()
		var keep []net.Conn
		fds := make([]int, 0, n)
		for range n {
			s, err := ln.Accept()
			if err != nil {
				die(err)
			}
			keep = append(keep, s)
			raw, _ := s.(*net.TCPConn).SyscallConn()
			raw.Control(func(fd uintptr) { fds = append(fds, int(fd)) })
		}
		<-peerDone
		out := 3
		hdr := make([]byte, wire.HeaderLen)
		// The sink says it is ready (through the relay) before the clock
		// starts, so process start-up is not measured.
		ready := make([]byte, 1)
		if _, err := unix.Read(out, ready); err != nil {
			die(err)
		}
		// The start stamp travels first, so the clock starts right at
		// the first batch.
		var stamp [8]byte
		t0 := wire.Monotonic()
		for i := range 8 {
			stamp[i] = byte(t0 >> (8 * i))
		}
		if err := unix.Sendmsg(out, stamp[:], nil, nil, 0); err != nil {
			die(err)
		}
		for off := 0; off < len(fds); off += wire.MaxFDs {
			end := min(off+wire.MaxFDs, len(fds))
			if err := unix.Sendmsg(out, hdr, unix.UnixRights(fds[off:end]...), nil, 0); err != nil {
				die(err)
			}
		}
		// Wait for the sink to finish before closing anything.
		buf := make([]byte, 1)
		unix.Read(out, buf)
		_ = keep
		peer.stop()
	case "relay":
		in, out := 3, 4
		buf := make([]byte, wire.MaxMessage)
		if _, err := unix.Read(out, buf[:1]); err != nil {
			die(err)
		}
		if _, err := unix.Write(in, buf[:1]); err != nil {
			die(err)
		}
		oob := make([]byte, unix.CmsgSpace(wire.MaxFDs*4))
		n0, _, _, _, err := unix.Recvmsg(in, buf, nil, 0)
		if err != nil {
			die(err)
		}
		if err := unix.Sendmsg(out, buf[:n0], nil, nil, 0); err != nil {
			die(err)
		}
		got := 0
		for got < n {
			nb, oobn, _, _, err := unix.Recvmsg(in, buf, oob, unix.MSG_CMSG_CLOEXEC)
			if err != nil {
				die(err)
			}
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			fds, _ := unix.ParseUnixRights(&msgs[0])
			if err := unix.Sendmsg(out, buf[:nb], unix.UnixRights(fds...), nil, 0); err != nil {
				die(err)
			}
			// Closed as the agent closes them (one close_range per run
			// of consecutive numbers), so that the floor does not carry
			// system calls the agent avoids.
			wire.CloseAll(fds)
			got += len(fds)
		}
		ack := make([]byte, 1)
		unix.Read(out, ack)
		unix.Write(in, ack)
	case "sink":
		in := 3
		buf := make([]byte, wire.MaxMessage)
		oob := make([]byte, unix.CmsgSpace(wire.MaxFDs*4))
		if _, err := unix.Write(in, []byte{0}); err != nil {
			die(err)
		}
		n0, _, _, _, err := unix.Recvmsg(in, buf, nil, 0)
		if err != nil || n0 != 8 {
			die(fmt.Errorf("start stamp: %v", err))
		}
		var t0 uint64
		for i := range 8 {
			t0 |= uint64(buf[i]) << (8 * i)
		}
		got := 0
		var all []int
		for got < n {
			_, oobn, _, _, err := unix.Recvmsg(in, buf, oob, unix.MSG_CMSG_CLOEXEC)
			if err != nil {
				die(err)
			}
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			fds, _ := unix.ParseUnixRights(&msgs[0])
			got += len(fds)
			all = append(all, fds...)
		}
		t1 := wire.Monotonic()
		fmt.Println(int64(t1 - t0))
		unix.Write(in, []byte{1})
		_ = all
	default:
		die(fmt.Errorf("unknown role"))
	}
	os.Exit(0)
}

// peerProc is the process holding the client ends of the source's
// connections.
type peerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// startPeer starts the peer role dialing n connections to addr.
func startPeer(n int, addr string) (*peerProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), floorRoleEnv+"=peer", "N="+strconv.Itoa(n), "ADDR="+addr)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start floor peer: %w", err)
	}
	return &peerProc{cmd: cmd, stdin: in, out: bufio.NewReader(out)}, nil
}

// connected waits for the peer's report that all its dials succeeded.
func (p *peerProc) connected() error {
	l, err := p.out.ReadString('\n')
	if err != nil || l != "connected\n" {
		return fmt.Errorf("floor peer did not connect: %q, %w", l, err)
	}
	return nil
}

// stop closes the peer's stdin and waits for it to exit.
func (p *peerProc) stop() {
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
		_ = p.cmd.Wait()
	}
}
