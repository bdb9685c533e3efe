package wire

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketPair returns two Conns on a fresh SOCK_SEQPACKET socketpair, each
// wrapped the way a process adopts a socket: net.FileConn → *net.UnixConn.
func socketPair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	a, b := adopt(t, fds[0]), adopt(t, fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func adopt(t *testing.T, fd int) *Conn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "seqpacket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatalf("file conn: %v", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		t.Fatalf("file conn is %T, want *net.UnixConn", c)
	}
	return NewConn(uc)
}

// fdCount counts this process's open descriptors.
func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count descriptors: %v", err)
	}
	return len(ents)
}

// assertFDs fails unless the process has exactly want descriptors open.
func assertFDs(t *testing.T, want int, what string) {
	t.Helper()
	if got := fdCount(t); got != want {
		t.Fatalf("%s: %d descriptors open, want %d (leak of %d)", what, got, want, got-want)
	}
}

// pipes opens n pipes and returns their read ends; the write ends are
// closed at once. Each read end has its own inode, so a received copy can
// be matched to what was sent.
func pipes(t *testing.T, n int) []int {
	t.Helper()
	out := make([]int, 0, n)
	for range n {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			CloseAll(out)
			t.Fatalf("pipe: %v", err)
		}
		unix.Close(p[1])
		out = append(out, p[0])
	}
	return out
}

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatalf("fstat %d: %v", fd, err)
	}
	return st.Ino
}

// header builds the raw 32 bytes of a header, independently of PutHeader,
// from the layout in docs/protocol.md.
func rawHeader(version uint8, typ Type, flags uint16, txid uint64, seq uint32, nfds uint16, bodyLen uint32) []byte {
	b := []byte{'H', 'O', 'F', 'F', version, byte(typ)}
	b = append(b, byte(flags), byte(flags>>8))
	for i := range 8 {
		b = append(b, byte(txid>>(8*i)))
	}
	for i := range 4 {
		b = append(b, byte(seq>>(8*i)))
	}
	b = append(b, byte(nfds), byte(nfds>>8), 0, 0)
	for i := range 4 {
		b = append(b, byte(bodyLen>>(8*i)))
	}
	return append(b, 0, 0, 0, 0)
}

// rawSend writes bytes and control data exactly as given, bypassing Send's
// checks: what a buggy or hostile peer can do with sendmsg.
func rawSend(t *testing.T, c *Conn, b, oob []byte) {
	t.Helper()
	if _, _, err := c.Unix().WriteMsgUnix(b, oob, nil); err != nil {
		t.Fatalf("sendmsg: %v", err)
	}
}

// recvBounded is Recv with a read deadline as a bound against a hang.
func recvBounded(t *testing.T, c *Conn) (Msg, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	m, err := c.Recv()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("receive timed out")
	}
	return m, err
}
