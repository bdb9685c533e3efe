package handoff

import (
	"io"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/wire"
)

// The reserve's memory is in place before any handoff arrives.
func TestReserveIsResident(t *testing.T) {
	r := newReserve(4096)
	for name, b := range map[string][]byte{
		"imported": unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(r.conns[:cap(r.conns)]))), cap(r.conns)*int(unsafe.Sizeof(Imported{}))),
		"slab":     unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(r.slab))), len(r.slab)*int(unsafe.Sizeof(sockConn{}))),
		"bytes":    r.bytes,
	} {
		if in, all := resident(t, b); in != all || all == 0 {
			t.Errorf("%s: %d of %d pages resident", name, in, all)
		}
	}
	if newReserve(0) != nil || newReserve(-1) != nil {
		t.Error("a reserve for no connections")
	}
}

// Each part of a reserve is handed out once, front first; what does not
// fit, and everything without a reserve, is fresh memory of the size asked.
func TestReserveHandsOut(t *testing.T) {
	r := newReserve(4)
	base := unsafe.SliceData(r.slab)
	a := r.takeSlab(3)
	if unsafe.SliceData(a) != base || len(a) != 3 || cap(a) != 3 {
		t.Fatalf("first slab not the reserve's front")
	}
	if b := r.takeSlab(2); unsafe.SliceData(b) == &unsafe.Slice(base, 4)[3] || len(b) != 2 {
		t.Fatalf("a slab bigger than what is left came from the reserve")
	}
	if c := r.takeSlab(1); unsafe.SliceData(c) != &unsafe.Slice(base, 4)[3] {
		t.Fatalf("the last slot was not handed out")
	}
	b1 := r.body(100)
	b2 := r.body(4*reserveStateBytes - 100)
	if len(b1) != 100 || cap(b1) != 100 || &b2[0] != &unsafe.Slice(&b1[0], 101)[100] {
		t.Fatal("bodies are not consecutive slices of the reserve")
	}
	if b3 := r.body(1); len(b3) != 1 {
		t.Fatal("body beyond the reserve")
	}
	s := r.importedSlice()
	if len(s) != 0 || cap(s) != 4 || r.importedSlice() != nil {
		t.Fatal("the imported slice is not handed out exactly once")
	}
	var none *reserve
	if len(none.takeSlab(2)) != 2 || len(none.body(5)) != 5 || none.importedSlice() != nil {
		t.Fatal("no reserve: want fresh memory")
	}
}

// adopt fills the reserve, then carries on in fresh memory, keeping every
// connection in arrival order and working.
func TestAdoptBeyondReserve(t *testing.T) {
	in := &incoming{res: newReserve(3)}
	in.conns = in.res.importedSlice()
	var peers []int
	defer func() { wire.CloseAll(peers) }()
	for batch := range 3 {
		var bi wire.BatchInfo
		var fds []int
		for i := range 2 {
			pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, pair[0])
			peers = append(peers, pair[1])
			bi.Entries = append(bi.Entries, wire.Entry{Kind: wire.KindConn, Key: "unix", State: []byte{byte(2*batch + i)}})
		}
		in.adopt(bi, fds)
	}
	if code, err := in.failure(); code != 0 {
		t.Fatal(err)
	}
	if len(in.conns) != 6 {
		t.Fatalf("%d connections adopted, want 6", len(in.conns))
	}
	for i, ic := range in.conns {
		if len(ic.State) != 1 || int(ic.State[0]) != i {
			t.Fatalf("connection %d has state %v", i, ic.State)
		}
		if _, err := unix.Write(peers[i], []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(ic.Conn, b); err != nil || int(b[0]) != i {
			t.Fatalf("connection %d read %v, %v", i, b, err)
		}
		ic.Conn.Close()
	}
}

// A reserve has room beyond what was expected, for connections accepted
// since: a handoff of a few more must not move everything to fresh memory.
func TestReserveSlack(t *testing.T) {
	for _, tc := range []struct{ expect, want int }{{-1, -1}, {0, 0}, {1, 65}, {1024, 1216}, {5000, 5689}} {
		if got := withSlack(tc.expect); got != tc.want {
			t.Errorf("withSlack(%d) = %d, want %d", tc.expect, got, tc.want)
		}
	}
	r := newReserve(withSlack(5000))
	conns := r.importedSlice()
	if got := growImported(conns, 5064); &got[:1][0] != &conns[:1][0] {
		t.Error("5064 connections did not fit a reserve for 5000")
	}
}
