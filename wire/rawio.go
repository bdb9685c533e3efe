package wire

import (
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The socket is non-blocking and every call below passes MSG_DONTWAIT, so
// recvmsg and sendmsg return at once or with EAGAIN; they are made as raw
// system calls, inside the poller's RawRead/RawWrite, which waits for
// readiness and honours deadlines.
//
// Why raw: a batch of 253 descriptors keeps recvmsg in the kernel for a
// hundred microseconds or more (it installs each descriptor). The runtime
// treats a goroutine in an ordinary system call for over 20µs as blocked:
// its monitor thread, polling every 20µs while that goes on, takes the P
// away and wakes another thread to run it. During a transfer that is
// every batch, in the agent and in the target, and the monitor's wake-ups
// and the thread hand-offs took a seventh of each process's CPU while the
// migration's three processes already competed for the cores. A raw call
// keeps the P: nothing else in the process is more urgent than the
// transfer, and the call never waits.

// setMsghdr points msg at p (through iov) and at oob.
func setMsghdr(msg *unix.Msghdr, iov *unix.Iovec, p, oob []byte) {
	if len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
	}
	msg.Iov = iov
	msg.Iovlen = 1
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
}

// rawRecvmsg is recvmsg(fd, p, oob, flags|MSG_DONTWAIT) as a raw system call.
func rawRecvmsg(fd int, p, oob []byte, flags int) (n, oobn, rflags int, err error) {
	var iov unix.Iovec
	var msg unix.Msghdr
	setMsghdr(&msg, &iov, p, oob)
	r, _, e := syscall.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags|unix.MSG_DONTWAIT))
	if e != 0 {
		return 0, 0, 0, e
	}
	return int(r), int(msg.Controllen), int(msg.Flags), nil
}

// rawSendmsg is sendmsg(fd, p, oob, MSG_DONTWAIT|MSG_NOSIGNAL) as a raw
// system call.
func rawSendmsg(fd int, p, oob []byte) (int, error) {
	var iov unix.Iovec
	var msg unix.Msghdr
	setMsghdr(&msg, &iov, p, oob)
	r, _, e := syscall.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// readMsg receives one datagram into p and oob, waiting in the poller.
func (c *Conn) readMsg(p, oob []byte) (n, oobn, flags int, err error) {
	if c.raw == nil {
		n, oobn, flags, _, err = c.uc.ReadMsgUnix(p, oob)
		return n, oobn, flags, err
	}
	var serr error
	rerr := c.raw.Read(func(fd uintptr) bool {
		for { // a signal can interrupt even a call that does not wait
			n, oobn, flags, serr = rawRecvmsg(int(fd), p, oob, unix.MSG_CMSG_CLOEXEC)
			if serr != unix.EINTR {
				return serr != unix.EAGAIN
			}
		}
	})
	if rerr != nil {
		return 0, 0, 0, c.opError("read", rerr)
	}
	if serr != nil {
		return 0, 0, 0, c.opError("read", os.NewSyscallError("recvmsg", serr))
	}
	return n, oobn, flags, nil
}

// writeMsg sends one datagram, waiting in the poller while the socket is full.
func (c *Conn) writeMsg(p, oob []byte) (n, oobn int, err error) {
	if c.raw == nil {
		return c.uc.WriteMsgUnix(p, oob, nil)
	}
	var serr error
	werr := c.raw.Write(func(fd uintptr) bool {
		for {
			n, serr = rawSendmsg(int(fd), p, oob)
			if serr != unix.EINTR {
				return serr != unix.EAGAIN
			}
		}
	})
	if werr != nil {
		return 0, 0, c.opError("write", werr)
	}
	if serr != nil {
		return 0, 0, c.opError("write", os.NewSyscallError("sendmsg", serr))
	}
	return n, len(oob), nil
}

// opError wraps err as the net package would for a call on c's socket.
func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "unixpacket", Source: c.uc.LocalAddr(), Addr: c.uc.RemoteAddr(), Err: err}
}
