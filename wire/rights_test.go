package wire

import (
	"bytes"
	"errors"
	"slices"
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

// parseRights reads every SCM_RIGHTS message in the control data, and
// returns what it read even when something else there is wrong, so that
// the caller can close it.
func TestParseRights(t *testing.T) {
	two := append(unix.UnixRights(3, 4, 5), unix.UnixRights(7)...)
	fds, err := parseRights(two)
	if err != nil || !slices.Equal(fds, []int{3, 4, 5, 7}) {
		t.Fatalf("two rights messages: %v, %v", fds, err)
	}
	if fds, err := parseRights(nil); fds != nil || err != nil {
		t.Fatalf("no control data: %v, %v", fds, err)
	}
	creds := unix.UnixCredentials(&unix.Ucred{Pid: 1})
	fds, err = parseRights(append(unix.UnixRights(9), creds...))
	if !errors.Is(err, ErrMalformed) || !slices.Equal(fds, []int{9}) {
		t.Fatalf("rights then credentials: %v, %v; want [9] and ErrMalformed", fds, err)
	}
	fds, err = parseRights(unix.UnixRights(11)[:unix.CmsgLen(0)+2])
	if !errors.Is(err, ErrMalformed) || len(fds) != 0 {
		t.Fatalf("cut control data: %v, %v; want none and ErrMalformed", fds, err)
	}
}
