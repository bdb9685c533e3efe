package wire

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPutRightsMatchesUnixRights(t *testing.T) {
	var buf []byte
	for _, fds := range [][]int{{3}, {3, 4, 5}, make([]int, MaxFDs), {7}} {
		for i := range fds {
			if fds[i] == 0 {
				fds[i] = 100 + i
			}
		}
		if got, want := putRights(&buf, fds), unix.UnixRights(fds...); !bytes.Equal(got, want) {
			t.Fatalf("putRights(%d fds) = %x, want %x", len(fds), got, want)
		}
	}
}
